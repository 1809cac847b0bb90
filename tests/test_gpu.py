"""On a CUDA device: the policy trains there, in fp16 (loss-scaled) and bf16, with float32 log-probs.

Skipped on hosts without CUDA. bench/gpu_check.py runs the same on a GPU host through the CLI, with
both engines, and records the numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from eprl.training.config import load_run_config
from eprl.training.loop import _start
from eprl.training.metrics import read_metrics
from eprl.training.policy import resolve_model_path

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
    ),
]
REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_two_iterations_on_cuda(dtype, tmp_path, eprl_cache):
    cfg = load_run_config(
        REPO / "tasks" / "default.yaml",
        overrides=[
            "model.tiny_sft_steps=30",
            f"model.cache_dir={eprl_cache}",
            "task.group_size=4",
            "task.tasks_per_iteration=3",
            "task.eval.num_tasks=2",
            "task.eval_samples=1",
            "run.iterations=2",
            "run.checkpoint_every=2",
            "run.progress=false",
            "run.device=cuda",
            f"model.dtype={dtype}",
            f"run.out_dir={tmp_path}",
            "run.name=gpu",
        ],
    )
    trainer = _start(cfg, resolve_model_path(cfg), {"model": "tiny"})
    assert next(trainer.model.parameters()).device.type == "cuda"
    assert next(trainer.model.parameters()).dtype == torch.float32  # master weights; compute is autocast
    assert trainer.learner.scaler.is_enabled() == (dtype == "fp16")
    rows = read_metrics(trainer.fit()["run_dir"])
    for row in (r for r in rows if r["groups_trained"] > 0):
        assert all(math.isfinite(row[k]) for k in ("loss", "grad_norm", "entropy", "mismatch_dp_max"))
        assert 0 < row["mismatch_dp_max"] < 0.5  # engine samples fp32 weights, learner computes in 16 bits


def test_torchrun_one_rank_nccl_fsdp2(tmp_path, eprl_cache):
    """torchrun with one rank per visible GPU (capped at 1 here): NCCL, FSDP2, bf16 compute; every
    trained iteration finite. (Run by hand on an H100 on 2026-11-23: rc 0, see bench/results/gpu_check.md.)"""
    from cli_runs import torchrun_ok

    sets = [
        "model.tiny_sft_steps=30",
        f"model.cache_dir={eprl_cache}",
        "task.group_size=4",
        "task.tasks_per_iteration=3",
        "task.eval.num_tasks=2",
        "task.eval_samples=1",
        "run.iterations=2",
        "run.progress=false",
        "model.dtype=bf16",
        "run.device=cuda",
        f"run.out_dir={tmp_path}",
        "run.name=nccl",
    ]
    torchrun_ok(
        "-m",
        "eprl.training",
        "train",
        "--task",
        str(REPO / "tasks" / "default.yaml"),
        *[a for s in sets for a in ("--set", s)],
        nproc=1,
    )
    rows = read_metrics(tmp_path / "nccl")
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows if r["groups_trained"] > 0)
