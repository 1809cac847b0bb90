"""Every method runs end to end on the embedded tiny default and logs every metric of docs/algorithms.md."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from eprl.training.config import load_run_config
from eprl.training.loop import Trainer, _start
from eprl.training.metrics import read_metrics
from eprl.training.policy import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "grpo": [],
    "dr_grpo": ["learner.std_normalize=false", "learner.loss_agg=seq_mean_token_sum_norm"],
    "loop": ["learner.advantage=loo", "learner.eps=0.1", "learner.ppo_lower_bound=inverse"],
    "rloo_pg": ["learner.advantage=loo", "learner.loss=pg"],
    "dapo": [
        "learner.loss=dapo",
        "learner.dynamic_sampling=true",
        "learner.max_resample_rounds=1",
        # dynamic sampling needs informative groups: the 30-step warm start, sampled from its full distribution,
        # solves no task, and 12 new tokens cut answers short; the default warm start with 24 tokens solves ~40%
        "model.tiny_sft_steps=200",
        "task.sampling.max_new_tokens=24",
        "learner.overlong_buffer=8",
    ],
    "gspo": ["learner.loss=gspo", "learner.loss_agg=seq_mean_token_mean"],
    "repo_r": ["learner.entropy_control.type=repo_r"],
    "repo_d": ["learner.entropy_control.type=repo_d"],
    "adapo": ["learner.loss=dapo", "learner.entropy_control.type=adapo"],
    "kl_entropy_tis": ["learner.kl_coef=0.01", "learner.entropy_coef=0.001", "learner.tis_cap=2.0"],
    "cispo": ["learner.loss=cispo"],
    "reinforce_pp_clip_cov": ["learner.advantage=reinforce_pp", "learner.entropy_control.type=clip_cov"],
    "kl_cov_dual_clip": ["learner.entropy_control.type=kl_cov", "learner.clip_ratio_c=3", "learner.entropy_coef=0.001"],
    "bf16": ["model.dtype=bf16"],
    "fp16_scaled": ["model.dtype=fp16", "learner.loss=dapo"],
}
ALWAYS = [
    "reward_mean",
    "reward_std",
    "success_rate",
    "entropy",
    "entropy_sampled",
    "cumulative_entropy",
    "clip_frac_high",
    "clip_frac_low",
    "approx_kl",
    "grad_norm",
    "mismatch_dp_mean",
    "mismatch_dp_max",
    "mismatch_iw_max",
    "rollout_tokens_per_s",
    "learn_tokens_per_s",
    "time_rollout",
    "time_learn",
    "loss",
    "clip_frac_dual",
    "skipped_steps",
]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_and_logs_every_metric(method, tmp_path, eprl_cache):
    cfg = load_run_config(
        REPO / "tasks" / "default.yaml",
        overrides=[
            "model.tiny_sft_steps=30",
            f"model.cache_dir={eprl_cache}",
            "task.group_size=4",
            "task.tasks_per_iteration=3",
            "task.eval.num_tasks=2",
            "task.eval_samples=1",
            "task.sampling.max_new_tokens=12",
            "task.eval_sampling.max_new_tokens=12",
            "run.iterations=2",
            "run.checkpoint_every=2",
            "run.progress=false",
            "learner.epochs=2",
            "learner.minibatches=2",
            f"run.out_dir={tmp_path}",
            f"run.name={method}",
            "run.device=cpu",  # same draws on GPU hosts (dapo needs informative groups; CUDA is tests/test_gpu.py)
            *METHODS[method],
        ],
    )
    trainer: Trainer = _start(cfg, resolve_model_path(cfg), {"model": "tiny"})
    summary = trainer.fit()
    rows = read_metrics(summary["run_dir"])
    assert [r["iteration"] for r in rows] == [0, 1]
    trained = [r for r in rows if r["groups_trained"] > 0]
    assert trained, f"{method}: no iteration had a group to train on"
    for row in trained:
        missing = [k for k in ALWAYS if k not in row or row[k] is None or not math.isfinite(row[k])]
        assert not missing, f"{method}: missing metrics {missing}"
        assert 0 <= row["clip_frac_high"] <= 1 and 0 <= row["clip_frac_low"] <= 1
        if cfg.model.dtype == "fp32":
            assert row["mismatch_dp_max"] < 1e-3  # hf engine and learner share weights and fp32 math
        else:  # the engine samples in fp32, the learner computes in 16 bits: the mismatch is real and logged
            assert 0 < row["mismatch_dp_max"] < 0.5 and row["mismatch_iw_max"] > 1.0
    if cfg.learner.entropy_control.type in ("repo_r", "repo_d"):
        assert all("zeta" in r for r in trained) and all(r["target_entropy"] > 0 for r in trained)
    if cfg.learner.entropy_control.type == "adapo":
        assert all("eps_high" in r for r in trained)
    if cfg.learner.entropy_control.type == "kl_cov":  # top-k: at least one token per pass
        assert all(0 < r["cov_selected_frac"] <= 1 for r in trained)
    if cfg.learner.entropy_control.type == "clip_cov":  # only tokens with 1 < cov < 5: there may be none
        assert all(0 <= r["cov_selected_frac"] <= 1 for r in trained)
    assert all(r["skipped_steps"] == 0 for r in trained)
    assert trained[-1]["cumulative_entropy"] == pytest.approx(sum(r["entropy"] for r in trained))
    assert summary["eval_success_final"] is not None


def test_controller_sees_the_pre_update_entropy_even_with_differentiable_entropy(tiny_model, tiny_tokenizer):
    """repo_d / entropy bonus compute in-update entropy; the logged `entropy` (and the controller's H)
    must still be the pre-update policy's, identical to what a method without that term logs."""
    import torch

    from eprl.agents.trajectory import Trajectory
    from eprl.training.batch import collate
    from eprl.training.config import LearnerConfig
    from eprl.training.learner import Learner

    torch.manual_seed(0)
    ids = torch.randint(3, len(tiny_tokenizer), (4, 12)).tolist()
    trajs = [
        Trajectory(t, [0] * 6 + [1] * 6, [0.0] * 12, [(6, 12)], float(k % 2), bool(k % 2), "t", 0, "terminated")
        for k, t in enumerate(ids)
    ]
    batch = collate(trajs, tiny_tokenizer.pad_token_id)
    logged = {}
    for name, overrides in {"plain": {}, "bonus": {"entropy_coef": 0.5}, "repo_d": {}}.items():
        model = type(tiny_model)(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        cfg = LearnerConfig(lr=0.05, epochs=2, minibatches=2, **overrides)
        if name == "repo_d":
            cfg.entropy_control.type = "repo_d"
        logged[name] = Learner(model, cfg, temperature=1.0, max_len_norm=64).step(batch)
    assert logged["bonus"]["entropy"] == pytest.approx(logged["plain"]["entropy"], abs=1e-6)
    assert logged["repo_d"]["entropy"] == pytest.approx(logged["plain"]["entropy"], abs=1e-6)
    assert logged["bonus"]["entropy_in_update"] != pytest.approx(logged["bonus"]["entropy"], abs=1e-6)
