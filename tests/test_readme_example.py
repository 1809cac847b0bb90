"""The README's 'Registering an environment' example works as written, with its own suite, installed
as a plugin in a fresh process, and with the README's generic suite example."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runs import SMALL
from gymnasium.utils.env_checker import check_env

from eprl import envs
from eprl.training.config import ConfigError, TaskSuite, load_task_suite
from eprl.training.policy import env_factory

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(lang: str, first_line: str) -> str:
    return re.search(rf"```{lang}\n({re.escape(first_line)}.*?)```", README.read_text(), re.S).group(1)


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    """The README's my_envs/guess.py, importable, and 'pip installed' (a dist-info with its entry point)."""
    (tmp_path / "my_envs").mkdir()
    (tmp_path / "my_envs" / "__init__.py").write_text("")
    (tmp_path / "my_envs" / "guess.py").write_text(_block("python", "# my_envs/guess.py"))
    dist = tmp_path / "my_envs-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-envs\nVersion: 0.1\n")
    toml = _block("toml", '[project.entry-points."eprl.envs"]')
    entry = re.search(r'^(\S+) = "(.+)"$', toml, re.M)  # TOML -> entry_points.txt (what pip writes)
    (dist / "entry_points.txt").write_text(f"[eprl.envs]\n{entry.group(1)} = {entry.group(2)}\n")
    (tmp_path / "guess.yaml").write_text(_block("yaml", "name: guess"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_envs.guess", None)
    sys.modules.pop("my_envs", None)


def test_readme_env_example_registers_checks_and_plays(plugin_dir):
    __import__("my_envs.guess")
    assert "eprl/Guess-v0" in envs.list_envs()
    env = envs.make("eprl/Guess-v0")
    check_env(env.unwrapped)
    obs, info = env.reset(options={"task_index": 4})
    assert info["task_id"] == "guess-5"
    assert env.step("3")[:4] == ("higher", 0.0, False, False)
    assert env.step("7")[0] == "lower"
    obs, reward, terminated, truncated, info = env.step("5")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)


def test_readme_suite_runs_the_readme_env_on_both_splits(plugin_dir):
    __import__("my_envs.guess")
    suite = load_task_suite(plugin_dir / "guess.yaml")
    train, test = env_factory(suite, "train")(), env_factory(suite, "eval")()
    assert train.reset(options={"task_index": 0})[1]["task_id"] == "guess-1"
    assert test.reset(options={"task_index": 0})[1]["task_id"] == "guess-9"
    assert suite.eval.num_tasks == train.unwrapped.num_tasks == 9
    # the failure the README used to show, now one line naming the field
    bare = TaskSuite(env={"id": "eprl/Guess-v0", "kwargs": {"colour": "red"}})
    with pytest.raises(
        ConfigError,
        match=r"^task.env.kwargs.colour: eprl/Guess-v0 \(my_envs.guess:GuessEnv\) takes no "
        r"argument 'colour'; it takes: split, max_turns$",
    ):
        env_factory(bare, "train")


def test_readme_generic_suite_example_validates_and_makes_envs():
    suite = TaskSuite.model_validate(yaml.safe_load(_block("yaml", "name: arith-calc")))
    for split in ("train", "eval"):
        env = env_factory(suite, split)()
        assert env.reset(options={"task_index": 3})[1]["task_id"]


def _python(code: str, plugin_dir: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=plugin_dir,
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"},
    )


def test_installed_plugin_is_found_by_gymnasium_in_a_fresh_process(plugin_dir):
    proc = _python(
        "import gymnasium as gym\n"
        "print(gym.make('eprl.envs:eprl/Guess-v0').reset(options={'task_index': 1})[1]['task_id'])\n"
        "print(gym.make('eprl/Guess-v0').unwrapped.max_turns)",
        plugin_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["guess-2", "4"]
    proc = _python("import eprl.envs, gymnasium\nprint(gymnasium.make('eprl/Guess-v0').unwrapped.split)", plugin_dir)
    assert (proc.returncode, proc.stdout.strip()) == (0, "train"), proc.stderr[-2000:]


def test_eprl_trains_on_the_installed_readme_plugin(plugin_dir, eprl_cache):
    """`eprl train --task guess.yaml` in a fresh process: the entry point alone makes the id known."""
    sets = [s for s in SMALL if not s.startswith("task.")] + [
        f"model.cache_dir={eprl_cache}",
        f"run.out_dir={plugin_dir}",
        "run.name=guess",
        "run.iterations=1",
        "task.group_size=2",
        "task.tasks_per_iteration=2",
        "task.eval.num_tasks=2",
    ]
    proc = _python(
        "",
        plugin_dir,
        "-m",
        "eprl.training",
        "train",
        "--task",
        "guess.yaml",
        *[a for s in sets for a in ("--set", s)],
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (plugin_dir / "guess" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0] and rows[0]["episodes"] == 4
    assert json.loads((plugin_dir / "guess" / "config.json").read_text())["task"]["env"]["id"] == "eprl/Guess-v0"
