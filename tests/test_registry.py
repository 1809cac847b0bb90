"""The one Registry type (eprl/registry.py), and plugins registered by entry point from a separate package:
a user-written loss and entropy controller that `eprl train` uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_runs import SMALL

from eprl.errors import ConfigError, EprlError
from eprl.registry import Registry, UnknownNameError
from eprl.training.config import load_run_config


def test_register_get_names_and_lazy_strings():
    reg: Registry = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b():
        return 2

    reg.register("c", "json:dumps")  # "module:attr", imported on first get
    assert reg.names() == ["a", "b", "c"] and sorted(reg) == ["a", "b", "c"] and len(reg) == 3
    assert reg.get("a") == 1 and reg["b"] is b and reg.get("c") is json.dumps
    assert "c" in reg and "d" not in reg


def test_unknown_and_unloadable_names_are_config_errors():
    reg: Registry = Registry("widget")
    reg.register("x", "no_such_module_eprl:thing")
    with pytest.raises(UnknownNameError, match=r"^unknown widget 'y'; registered: x$") as err:
        reg.get("y")
    assert isinstance(err.value, ConfigError) and isinstance(err.value, EprlError) and isinstance(err.value, ValueError)
    with pytest.raises(ConfigError, match="widget 'x': cannot load 'no_such_module_eprl:thing'"):
        reg.get("x")


def test_every_named_config_choice_is_checked_against_its_registry():
    for setting, message in [
        ("learner.loss_agg=mean", "unknown loss aggregation 'mean'; registered: seq_mean_token_mean, "),
        ("learner.entropy_control.type=magic", "unknown entropy controller 'magic'; registered: adapo, clip_cov, "),
        ("learner.advantage=x", "unknown advantage estimator 'x'; registered: grpo, loo, "),
        ("task.agent.type=x", "unknown agent type 'x'; registered: chat, react"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_run_config(overrides=[setting])


# ----------------------------------------------------------------------------- plugins, by entry point
LOSS = '''
    """A user's loss: DAPO, recording the eps_high it was given (the controller's override)."""
    import os

    from eprl.training.losses import LossInputs, PolicyTerms, dapo_loss


    def marked_dapo(batch: LossInputs, cfg) -> PolicyTerms:
        with open(os.environ["MY_RL_MARK"], "a") as f:
            f.write(f"{cfg.eps_high}\\n")
        return dapo_loss(batch, cfg)
'''
CONTROLLER = '''
    """A user's entropy controller: holds eps_high at 0.5 and says so in the metrics."""
    from eprl.training.entropy_control import EntropyController


    class HalfClip(EntropyController):
        def loss_overrides(self):
            return {"eps_high": 0.5}

        def metrics(self):
            return {**super().metrics(), "half_clip": 1.0}
'''


@pytest.fixture()
def plugin_dir(tmp_path):
    """Package `my_rl`, 'pip installed' as a dist-info whose entry_points.txt (what pip writes) names both."""
    (tmp_path / "my_rl").mkdir()
    (tmp_path / "my_rl" / "__init__.py").write_text("")
    (tmp_path / "my_rl" / "losses.py").write_text(textwrap.dedent(LOSS))
    (tmp_path / "my_rl" / "control.py").write_text(textwrap.dedent(CONTROLLER))
    dist = tmp_path / "my_rl-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rl\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[eprl.losses]\nmarked_dapo = my_rl.losses:marked_dapo\n\n"
        "[eprl.entropy_controls]\nhalf_clip = my_rl.control:HalfClip\n"
    )
    return tmp_path


def test_eprl_train_uses_a_plugin_loss_and_controller(plugin_dir, eprl_cache):
    mark = plugin_dir / "calls.txt"
    sets = SMALL + [
        f"model.cache_dir={eprl_cache}",
        f"run.out_dir={plugin_dir}",
        "run.name=plugin",
        "run.iterations=1",
        "learner.loss=marked_dapo",
        "learner.entropy_control.type=half_clip",
    ]
    path = os.pathsep.join([str(plugin_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "eprl.training",
            "train",
            "--task",
            str(Path(__file__).parent.parent / "tasks" / "default.yaml"),
            *[a for s in sets for a in ("--set", s)],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=plugin_dir,
        env={**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "MY_RL_MARK": str(mark)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (plugin_dir / "plugin" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0] and rows[0]["half_clip"] == 1.0
    calls = mark.read_text().split()
    assert calls and set(calls) == {"0.5"}  # the loss ran, with the controller's eps_high (config's is 0.28)
    learner = json.loads((plugin_dir / "plugin" / "config.json").read_text())["learner"]
    assert (learner["loss"], learner["entropy_control"]["type"], learner["eps_high"]) == (
        "marked_dapo",
        "half_clip",
        0.28,
    )
