"""The text-env contract, the eprl registry and entry-point plugin discovery."""

import importlib
import json
import sys
import warnings

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

from eprl import envs
from eprl.envs import EpisodeOverError, TextEnv, TextSpace, UnknownEnvironmentError, list_envs, make, register_env

BUILTIN = [
    "eprl/Arithmetic-v0",
    "eprl/ArithmeticTool-v0",
    "eprl/Countdown-v0",
    "eprl/Math-v0",
    "eprl/MathFeedback-v0",
    "eprl/MathTool-v0",
]


@pytest.fixture
def tiny_jsonl(tmp_path):
    path = tmp_path / "tiny.jsonl"
    rows = [
        {"id": "t0", "question": "What is 2+2?", "answer": "4"},
        {"question": "What is half of 1?", "answer": "\\frac{1}{2}"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _make_kwargs(env_id, tiny_jsonl):
    spec = gym.spec(env_id)
    needs_source = spec.entry_point == "eprl.envs.math.env:MathEnv" and "source" not in spec.kwargs
    return {"source": tiny_jsonl} if needs_source else {}


def test_text_space_accepts_any_str_up_to_max_length():
    space = TextSpace(max_length=10)
    assert space.contains("") and space.contains("é\n\\boxed{}") and space.contains("x" * 10)
    assert not space.contains("x" * 11) and not space.contains(b"abc") and not space.contains(3)
    space.seed(0)
    samples = [space.sample() for _ in range(20)]
    assert all(isinstance(s, str) and len(s) <= 10 and s in space for s in samples)
    assert len(set(samples)) > 1


def test_builtin_ids_registered():
    assert set(BUILTIN) <= set(list_envs())
    assert all(i.startswith("eprl/") for i in list_envs())


@pytest.mark.parametrize("env_id", list_envs())
def test_check_env_passes_on_every_registered_env(env_id, tiny_jsonl):
    if "AppWorld" in env_id:
        from eprl.envs.appworld.setup import missing_reason

        if missing_reason():
            pytest.skip(missing_reason())
    env = make(env_id, **_make_kwargs(env_id, tiny_jsonl))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
    finally:
        env.close()
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("env_id", ["Arithmetic-v0", "eprl/Arithmetic-v0"])
def test_make_accepts_ids_with_and_without_namespace(env_id):
    env = make(env_id, difficulty=2)
    assert isinstance(env.unwrapped, TextEnv) and env.unwrapped.difficulty == 2
    obs, info = env.reset(seed=0)
    assert isinstance(obs, str) and obs.startswith("Compute ") and isinstance(info["task_id"], str)
    obs, reward, terminated, truncated, info = env.step("no idea")
    assert isinstance(obs, str) and reward == 0.0 and not terminated and not truncated


def test_unknown_id_error_lists_registered_ids():
    with pytest.raises(UnknownEnvironmentError) as err:
        make("Foo-v0")
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert message.startswith("unknown environment id 'eprl/Foo-v0'; registered: ")
    assert "eprl/Arithmetic-v0" in message and "eprl/ArithmeticTool-v0" in message


def test_dataset_env_without_source_fails_clearly():
    with pytest.raises(ValueError, match="needs source="):
        make("Math-v0")


def test_task_index_selects_task_deterministically(tiny_jsonl):
    env = make("Math-v0", source=tiny_jsonl)
    assert env.unwrapped.num_tasks == 2
    obs0, info0 = env.reset(seed=1, options={"task_index": 0})
    obs1, info1 = env.reset(seed=99, options={"task_index": 1})
    assert obs0.startswith("What is 2+2?") and info0["task_id"] == "t0"
    assert obs1.startswith("What is half of 1?") and info1["task_id"] == "tiny-2"
    with pytest.raises(IndexError):
        env.reset(options={"task_index": 2})
    procedural = make("Arithmetic-v0")
    assert procedural.unwrapped.num_tasks is None
    first = procedural.reset(options={"task_index": 123456})[0]
    assert procedural.reset(seed=5, options={"task_index": 123456})[0] == first
    drawn = {procedural.reset(seed=s)[1]["task_id"] for s in range(10)}
    assert len(drawn) == 10 and procedural.reset(seed=3)[0] == procedural.reset(seed=3)[0]


def test_step_after_episode_end_raises():
    env = make("Arithmetic-v0")
    env.reset(seed=0)
    answer = env.unwrapped.problem.answer
    assert env.step(f"\\boxed{{{answer}}}")[2] is True
    with pytest.raises(EpisodeOverError, match="reset"):
        env.step("\\boxed{1}")
    with pytest.raises(EpisodeOverError, match="reset"):
        envs.make("Arithmetic-v0").unwrapped.step("hi")


class EchoEnv(TextEnv):
    """Terminates after one step with reward len(action)."""

    def __init__(self, greeting="hi"):
        super().__init__()
        self.greeting = greeting

    def _reset_task(self, index):
        return self.greeting, {"task_id": f"echo-{index}"}

    def _step_text(self, action):
        return action, float(len(action)), True, False, {"task_id": "echo", "success": True}


def test_register_env_with_default_kwargs():
    env_id = register_env("Echo-v0", EchoEnv, greeting="hello")
    try:
        env = make("Echo-v0")
        assert env.reset(seed=0)[0] == "hello"
        assert make("eprl/Echo-v0", greeting="yo").reset()[0] == "yo"
        assert env.step("abc")[:3] == ("abc", 3.0, True)
    finally:
        gym.registry.pop(env_id)


PLUGIN_MODULE = """
from eprl.envs import register_env
from eprl.envs.base import TextEnv

class PluginEnv(TextEnv):
    def _reset_task(self, index):
        return "plugin says hi", {"task_id": f"plugin-{index}"}
    def _step_text(self, action):
        return "", 1.0, True, False, {"task_id": "plugin", "success": True}

def register():
    register_env("PluginFromHook-v0", PluginEnv)
"""


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch):
    (tmp_path / "eprl_test_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "eprl_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: eprl-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[eprl.envs]\nPluginClass-v0 = eprl_test_plugin:PluginEnv\nhook = eprl_test_plugin:register\n"
        "broken = eprl_test_plugin_missing:nothing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        with pytest.warns(RuntimeWarning, match="plugin 'broken'"):
            envs.load_plugins(rescan=True)
        ids = list_envs()
        assert "eprl/PluginClass-v0" in ids and "eprl/PluginFromHook-v0" in ids
        for env_id in ("PluginClass-v0", "PluginFromHook-v0"):
            env = make(env_id)
            assert env.reset(seed=0)[0] == "plugin says hi"
            assert env.step("x")[1:3] == (1.0, True)
            check_env(env.unwrapped)
    finally:
        for env_id in ("eprl/PluginClass-v0", "eprl/PluginFromHook-v0"):
            gym.registry.pop(env_id, None)
        sys.modules.pop("eprl_test_plugin", None)
