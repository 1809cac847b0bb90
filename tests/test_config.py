"""Config validation: one clear line naming the field, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eprl.training.config import ConfigError, RunConfig, TaskSuite, describe, load_run_config, load_task_suite

REPO = Path(__file__).resolve().parent.parent


def test_every_task_suite_in_repo_validates():
    suites = sorted((REPO / "tasks").glob("*.yaml"))
    assert len(suites) >= 3
    for path in suites:
        suite = load_task_suite(path)
        assert suite.group_size >= 1 and suite.env.id.startswith("eprl/")


def test_overrides_reach_nested_fields_with_yaml_types():
    cfg = load_run_config(
        REPO / "tasks" / "default.yaml",
        overrides=[
            "learner.lr=1e-5",
            "learner.entropy_control.type=repo_r",
            "task.group_size=4",
            "model.name_or_path=/x",
        ],
    )
    assert cfg.learner.lr == 1e-5 and isinstance(cfg.learner.lr, float)
    assert cfg.learner.entropy_control.type == "repo_r"
    assert cfg.task.group_size == 4
    assert cfg.model.name_or_path == "/x"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["learner.lr=-1"], "learner.lr: Input should be greater than 0"),
        (["learner.lrr=1"], "learner.lrr: unknown field"),
        (
            ["learner.entropy_control.type=magic"],
            "learner.entropy_control.type: Value error, unknown entropy controller 'magic'",
        ),
        (["task.group_size=many"], "task.group_size: Input should be a valid integer"),
        (["learner.lr"], "expected KEY=VALUE"),
        (
            ["learner.loss=ppo2"],
            "learner.loss: Value error, unknown policy loss 'ppo2'; registered: cispo, dapo, gspo, pg, ppo",
        ),
        (["learner.advantage=gae"], "learner.advantage: Value error, unknown advantage estimator 'gae'"),
        (["engine.type=sglang"], "engine.type: Value error, unknown engine 'sglang'; registered: hf, vllm"),
        (["task.agent.type=cot"], "task.agent.type: Value error, unknown agent type 'cot'"),
        (["run.device=tpu0"], "run.device: Value error, unknown device 'tpu0'; use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "tasks" / "default.yaml", overrides=overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nenv: {id: eprl/Arithmetic-v0\n  kwargs: [\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*bad.yaml \(line \d+"):
        load_task_suite(bad)
    with pytest.raises(ConfigError, match="file not found: .*nope.yaml"):
        load_run_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_task_suite(listy)


def test_every_field_is_documented():
    rows = describe(RunConfig)
    assert len(rows) > 60
    assert [name for name, _, desc in rows if not desc] == []


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "eprl.training", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngroup_size: [\n")
    for args, needle in [
        (["train", "--task", str(bad)], "malformed YAML"),
        (["train", "--set", "learner.loss_agg=mean"], "learner.loss_agg"),
        (["train", "--task", str(tmp_path / "missing.yaml")], "file not found"),
        (
            ["train", "--set", "task.env.id=eprl/NoSuchEnv-v0", "--set", "model.name_or_path=/nonexistent"],
            "unknown environment id 'eprl/NoSuchEnv-v0'",
        ),
        (
            ["train", "--set", "model.name_or_path=/nonexistent/model"],
            "model.name_or_path='/nonexistent/model': cannot load it",
        ),
        (["continue", str(tmp_path)], "--task is required"),
    ]:
        proc = _cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert needle in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_lists_envs_and_prints_reference():
    envs = _cli("envs")
    assert envs.returncode == 0 and "eprl/ArithmeticTool-v0" in envs.stdout.split()
    ref = _cli("config")
    assert ref.returncode == 0 and "learner.entropy_control.zeta" in ref.stdout


def test_device_resolution():
    from eprl.training.distributed import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="run.device='cuda' but torch sees no CUDA device; use run.device=cpu"):
            resolve_device("cuda")


REFUSED = [  # combinations where a knob has no effect or changes the method's meaning (issue #10)
    (["learner.entropy_control.type=adapo"], "learner: entropy_control.type=adapo with loss=ppo: ADAPO moves eps_high"),
    (["learner.entropy_control.type=adapo", "learner.loss=gspo"], "entropy_control.type=adapo with loss=gspo"),
    (["learner.tis_cap=2.0", "learner.old_logprobs=inference"], "learner: tis_cap with old_logprobs=inference"),
    (
        ["learner.loss=gspo", "learner.loss_agg=token_mean"],
        "learner: loss=gspo with loss_agg=token_mean: GSPO is defined per sequence",
    ),
    (["learner.clip_ratio_c=3", "learner.loss=cispo"], "learner: clip_ratio_c with loss=cispo"),
    (["learner.clip_ratio_c=1.0"], "learner.clip_ratio_c: Input should be greater than 1"),
    (["learner.advantage=loo", "learner.std_normalize=false"], "learner: std_normalize=false with advantage=loo"),
    (["learner.max_len_norm=64"], "learner: max_len_norm with loss_agg=token_mean"),
    (["learner.kl_estimator=k1"], "learner: kl_estimator=k1 with kl_coef=0"),
    (["learner.entropy_control.type=kl_cov"], "learner: entropy_control.type=kl_cov with epochs=1, minibatches=1"),
    (
        ["learner.entropy_control.type=repo_r", "learner.entropy_control.kl_cov_coef=2"],
        "learner.entropy_control: kl_cov_coef=2.0 has no effect with type=repo_r (it is a kl_cov field)",
    ),
    (
        ["learner.entropy_control.type=clip_cov", "learner.entropy_control.zeta=0.1"],
        "learner.entropy_control: zeta=0.1 has no effect with type=clip_cov (it is a repo_r / repo_d field)",
    ),
    (
        ["learner.entropy_control.gamma=2"],
        "learner.entropy_control: gamma=2.0 has no effect with type=none (it is a adapo field)",
    ),
    (
        ["learner.entropy_control.type=clip_cov", "learner.entropy_control.clip_cov_lb=6"],
        "clip_cov_lb must be below clip_cov_ub",
    ),
    (["learner.entropy_control.target_entropy=later"], "learner.entropy_control.target_entropy"),
    (
        ["task.agent.max_turns=6"],
        "task: agent.max_turns=6 disagrees with env.kwargs.max_turns=4: the smaller limit ends",
    ),
    (["task.eval.env_kwargs.max_turns=2"], "task: agent.max_turns=4 disagrees with eval.env_kwargs.max_turns=2"),
    (
        [
            "task.env.kwargs={difficulty: 2}",
            "task.agent.max_turns=3",
            "task.train.env_kwargs={split: train, max_turns: 5}",
        ],
        "task: agent.max_turns=3 disagrees with train.env_kwargs.max_turns=5",
    ),
]


@pytest.mark.parametrize("overrides, message", REFUSED)
def test_combinations_without_effect_are_refused(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(REPO / "tasks" / "default.yaml", overrides=overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_valid_combinations_of_the_new_methods_load():
    for sets in (
        ["learner.loss=dapo", "learner.entropy_control.type=adapo"],
        ["learner.loss=gspo"],
        ["learner.loss=cispo"],
        ["learner.advantage=reinforce_pp"],
        ["learner.advantage=reinforce_pp_baseline"],
        ["learner.entropy_control.type=clip_cov"],
        ["learner.entropy_control.type=kl_cov", "learner.minibatches=4"],
        ["learner.clip_ratio_c=3", "learner.loss=dapo"],
        ["learner.kl_coef=0.1", "learner.kl_estimator=k3+"],
        ["learner.entropy_control.target_entropy=remeasure"],
        ["learner.loss_agg=seq_mean_token_sum"],
    ):
        load_run_config(REPO / "tasks" / "default.yaml", overrides=sets)
    assert (
        load_run_config(REPO / "tasks" / "default.yaml", overrides=["learner.loss=gspo"]).learner.loss_agg
        == "seq_mean_token_mean"
    )


def test_agent_turn_limit_follows_the_envs_unless_set(tmp_path):
    suite = lambda **kw: TaskSuite.model_validate(kw)  # noqa: E731
    assert suite(env={"id": "eprl/Arithmetic-v0", "kwargs": {"max_turns": 2}}).agent.max_turns == 2
    assert suite(env={"id": "eprl/AppWorld-v0", "kwargs": {"max_interactions": 3}}).agent.max_turns == 3
    assert suite(agent={"max_turns": 5}).agent.max_turns == 5  # no env limit given (the env's default): not refused
    assert suite().agent.max_turns == 6
    # both splits set and disagreeing: nothing to follow, the agent's default is refused against the first
    with pytest.raises(ValueError, match="agent.max_turns=6 disagrees with train.env_kwargs.max_turns=2"):
        suite(train={"env_kwargs": {"max_turns": 2}}, eval={"env_kwargs": {"max_turns": 3}})
    path = tmp_path / "suite.yaml"
    path.write_text(
        (REPO / "tasks" / "default.yaml").read_text().replace("agent: {max_turns: 4", "agent: {max_turns: 1")
    )
    with pytest.raises(ConfigError, match=r"^task: agent.max_turns=1 disagrees with env.kwargs.max_turns=4: "):
        load_task_suite(path)
    saved = load_run_config(REPO / "tasks" / "default.yaml")
    assert RunConfig.model_validate_json(saved.model_dump_json()) == saved  # a run's config.json loads back as it was


def test_cli_refuses_a_combination_in_one_line_with_exit_2(tmp_path):
    proc = _cli("train", "--set", "learner.entropy_control.type=adapo", "--set", "learner.loss=ppo", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "eprl: error: learner: entropy_control.type=adapo with loss=ppo: ADAPO moves eps_high, which only loss=dapo "
        "reads (ppo uses eps, gspo gspo_eps_high, cispo cispo_eps_high, pg none)"
    ]
