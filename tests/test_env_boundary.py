"""The env boundary: contract checks, observation caps and the env-failure policy of the rollout runner."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from eprl.agents.chat import ChatAgent
from eprl.agents.engines import ScriptedEngine
from eprl.agents.rollout import EnvFailureError, RolloutRunner
from eprl.envs import TextEnv, make
from eprl.envs.contract import EnvContractError, cap_text, checked_reset, checked_step
from eprl.training.config import SamplingConfig

SAMPLING = SamplingConfig(max_new_tokens=4)


def scripted(tokenizer, text="\\boxed{1}") -> ScriptedEngine:
    """Answers every prompt with the token ids of `text` (no model): the runner's logic alone is under test."""
    return ScriptedEngine.constant(tokenizer(text, add_special_tokens=False)["input_ids"][: SAMPLING.max_new_tokens])


class BadEnv(TextEnv):
    """Misbehaves on purpose: `how` picks the failure, `tasks` which task indices it hits."""

    def __init__(self, how="ok", tasks=(0,)):
        super().__init__()
        self.how, self.tasks = how, set(tasks)

    @property
    def num_tasks(self):
        return 8

    def _reset_task(self, index):
        self.index = index
        if self.how == "reset_raises" and index in self.tasks:
            raise RuntimeError("reset exploded")
        info = {} if self.how == "no_task_id" else {"task_id": f"bad-{index}"}
        return "Say 1.", info

    def _step_text(self, action):
        hit = self.index in self.tasks
        if self.how == "step_raises" and hit:
            raise ZeroDivisionError("step exploded")
        reward = (
            {"nan": math.nan, "inf": math.inf, "int": 1, "numpy": np.float32(1.0)}.get(self.how, 1.0) if hit else 1.0
        )
        obs = {"int_obs": 7, "huge_obs": "x" * 1_000_000}.get(self.how, "") if hit else ""
        done = self.how != "huge_obs" or not hit
        info = {} if self.how == "no_success" else {"success": True}
        return obs, reward, done, False, info


def _runner(tiny_tokenizer, how, tasks=(0,), **kwargs):
    agent = ChatAgent(tiny_tokenizer)
    return RolloutRunner(
        lambda: BadEnv(how, tasks),
        agent,
        scripted(tiny_tokenizer),
        max_turns=3,
        max_context_tokens=kwargs.pop("max_context_tokens", 320),
        progress=False,
        **kwargs,
    )


@pytest.mark.parametrize("how", ["nan", "inf"])
def test_non_finite_reward_is_rejected_naming_env_and_task(how):
    env = BadEnv(how)
    env.reset(options={"task_index": 0})
    with pytest.raises(EnvContractError) as err:
        env.step("anything")
    assert str(err.value) == (
        f"env BadEnv, task 'bad-0': step() returned a non-finite reward ({float(how)}); rewards must be finite numbers"
    )
    with pytest.raises(EnvContractError, match="non-finite"):
        checked_step(("", float(how), True, False, {}), "eprl/Plugin-v0", "t1")


def test_contract_rules_for_ints_missing_keys_and_wrong_types():
    assert checked_step(("ok", 1, 0, np.bool_(True), None), "e", "t") == ("ok", 1.0, False, True, {})
    assert checked_step(("ok", np.float32(0.5), True, False, {"success": np.bool_(True)}), "e", "t")[1] == 0.5
    assert checked_reset(("hi", {}), "e", 3) == ("hi", {"task_id": "3"})  # missing task_id: the index
    assert checked_reset(("hi", {"task_id": 12}), "e", 3) == ("hi", {"task_id": "12"})
    for result, needle in [
        ((7, 1.0, True, False, {}), "observation of type int; observations must be str"),
        (("", "1", True, False, {}), "reward of type str"),
        (("", 1.0, "yes", False, {}), "terminated='yes'"),
        (("", 1.0, True, False, []), "info of type list"),
        (("", 1.0, True, False, {"success": "yes"}), "info['success'] is 'yes'"),
        (("", 1.0, True), "must return (observation, reward, terminated, truncated, info)"),
    ]:
        with pytest.raises(EnvContractError, match=r"^env eprl/X-v0, task 't9': .*") as err:
            checked_step(result, "eprl/X-v0", "t9")
        assert needle in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EnvContractError, match="reset\\(\\) returned an observation of type int"):
        checked_reset((5, {}), "e", 0)


def test_missing_task_id_and_success_follow_the_documented_rules(tiny_tokenizer):
    trajs, stats = _runner(tiny_tokenizer, "no_task_id", tasks=range(8)).run([2], 1, SAMPLING, seed=0)
    assert trajs[0].task_id == "2" and stats.failed_episodes == 0
    trajs, _ = _runner(tiny_tokenizer, "no_success", tasks=range(8)).run([2], 1, SAMPLING, seed=0)
    assert trajs[0].success is False and trajs[0].reward == 1.0


def test_int_and_numpy_rewards_are_accepted_as_floats(tiny_tokenizer):
    for how in ("int", "numpy"):
        trajs, stats = _runner(tiny_tokenizer, how, tasks=range(8)).run([0, 1], 1, SAMPLING, seed=0)
        assert [t.reward for t in trajs] == [1.0, 1.0] and all(type(t.reward) is float for t in trajs)


@pytest.mark.parametrize("how", ["step_raises", "reset_raises", "nan", "int_obs"])
def test_a_failing_env_fails_only_its_episode(tiny_tokenizer, how, caplog):
    runner = _runner(tiny_tokenizer, how, tasks=(0,), max_failed_fraction=0.5)
    with caplog.at_level(logging.ERROR, logger="eprl.rollout"):
        trajs, stats = runner.run([0, 1, 2, 3], 1, SAMPLING, seed=0)
        runner.run([0, 1, 2, 3], 1, SAMPLING, seed=1)  # the same error again: counted, not logged again
    assert stats.failed_episodes == 1 and stats.episodes == 4
    failed = trajs[0]
    assert failed.termination == "error" and failed.reward == 0.0 and not failed.success
    assert failed.info["env_error"].split(":")[0] in ("ZeroDivisionError", "RuntimeError", "EnvContractError")
    assert [t.reward for t in trajs[1:]] == [1.0, 1.0, 1.0] and all(t.termination == "terminated" for t in trajs[1:])
    assert len(caplog.records) == 1 and "Traceback" in caplog.text and "BadEnv" in caplog.text


def test_too_many_failures_stop_the_run_with_one_clear_line(tiny_tokenizer):
    runner = _runner(tiny_tokenizer, "step_raises", tasks=(0, 1), max_failed_fraction=0.25)
    with pytest.raises(EnvFailureError) as err:
        runner.run([0, 1, 2, 3], 1, SAMPLING, seed=0)
    assert str(err.value) == (
        "env BadEnv: 2 of 4 episodes failed in one batch (limit 25%), first error: "
        "ZeroDivisionError: step exploded; fix the env, or raise task.agent.max_failed_episodes_fraction"
    )
    _runner(tiny_tokenizer, "step_raises", tasks=(0,), max_failed_fraction=0.25).run([0, 1, 2, 3], 1, SAMPLING, seed=0)


def test_on_env_error_raise_keeps_the_exception(tiny_tokenizer):
    with pytest.raises(ZeroDivisionError, match="step exploded"):
        _runner(tiny_tokenizer, "step_raises", on_env_error="raise").run([0], 1, SAMPLING, seed=0)


def test_a_huge_observation_never_exceeds_the_context(tiny_tokenizer):
    trajs, stats = _runner(tiny_tokenizer, "huge_obs", tasks=(0,), max_context_tokens=320).run(
        [0, 1], 1, SAMPLING, seed=0
    )
    big = trajs[0]
    assert len(big.token_ids) == 320 and big.termination == "context_limit" and big.num_turns == 1
    assert len(big.messages[-1]["content"]) <= 16 * 320 and "observation truncated" in big.messages[-1]["content"]
    assert trajs[1].termination == "terminated" and stats.failed_episodes == 0


def test_a_huge_first_observation_is_cut_too(tiny_tokenizer):
    class HugePrompt(BadEnv):
        def _reset_task(self, index):
            super()._reset_task(index)
            return "y " * 500_000, {"task_id": "huge"}

    runner = RolloutRunner(
        HugePrompt,
        ChatAgent(tiny_tokenizer),
        scripted(tiny_tokenizer),
        max_turns=3,
        max_context_tokens=320,
        progress=False,
    )
    trajs, _ = runner.run([0], 1, SAMPLING, seed=0)
    assert (
        len(trajs[0].token_ids) <= 320 and trajs[0].termination == "context_limit" and trajs[0].num_action_tokens == 0
    )


def test_cap_text_says_it_cut():
    assert cap_text("abc", 3) == "abc"
    capped = cap_text("z" * 10_000, 100)
    assert len(capped) == 100 and capped.startswith("z") and "10000 characters, limit 100" in capped


def test_config_exposes_the_policy():
    from eprl.training.config import AgentConfig, ConfigError, load_run_config

    assert AgentConfig().on_env_error == "fail_episode" and AgentConfig().max_failed_episodes_fraction == 0.2
    with pytest.raises(ConfigError, match="task.agent.on_env_error"):
        load_run_config(overrides=["task.agent.on_env_error=ignore"])


def test_builtin_env_registry_ids_name_the_env_in_errors():
    env = make("Arithmetic-v0")
    env.reset(seed=0)
    from eprl.envs.contract import env_name

    assert env_name(env) == "eprl/Arithmetic-v0"
