"""Checkpoints: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one;
`continue` starts a new run on another suite from a checkpoint (fresh optimizer, parent recorded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_runs import SMALL, continue_cmd, kill_at_checkpoint, run_ok, train_cmd
from safetensors.torch import load_file

from eprl.training.checkpoint import load_trainer_state

REPO = Path(__file__).resolve().parent.parent
# ADAPO moves eps_high, which only the dapo loss reads (config refuses adapo with ppo)
SETTINGS = SMALL + ["learner.loss=dapo", "learner.entropy_control.type=adapo"]


def _cmd(cache: Path, out: Path, name: str, *extra: str) -> list[str]:
    return train_cmd(SETTINGS + [f"model.cache_dir={cache}", f"run.out_dir={out}", f"run.name={name}", *extra])


def _weights(run_dir: Path) -> dict:
    ckpt = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(ckpt / "model" / "model.safetensors"))


def _training_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # timings and the process's peak RSS are measurements of the machine, not of the training
    return [
        {k: v for k, v in r.items() if not k.startswith("time") and not k.endswith("_per_s") and k != "rss_peak_mb"}
        for r in rows
    ]


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_exact(tmp_path, eprl_cache):
    # The entropy bonus guarantees a gradient even when every group's rewards are equal.
    iters = ["run.iterations=4", "run.checkpoint_every=2", "learner.entropy_coef=0.01"]
    run_ok(_cmd(eprl_cache, tmp_path, "full", *iters))
    full = tmp_path / "full"
    proc = subprocess.Popen(
        _cmd(eprl_cache, tmp_path, "killed", *iters), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    killed = tmp_path / "killed"
    kill_at_checkpoint(proc, killed, "iter_000002")
    run_ok([sys.executable, "-m", "eprl.training", "train", "--resume", str(killed)])
    a, b = _weights(full), _weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert _training_rows(full) == _training_rows(killed)
    # and the weights did change from the warm start
    start = load_file(str(Path(json.loads((full / "meta.json").read_text())["model"]) / "model.safetensors"))
    assert any(not torch.equal(start[k], a[k]) for k in a if k in start)


@pytest.mark.slow
def test_continue_on_a_second_suite(tmp_path, eprl_cache):
    run_ok(_cmd(eprl_cache, tmp_path, "parent", "run.iterations=2", "run.checkpoint_every=1"))
    parent = tmp_path / "parent"
    parent_state = load_trainer_state(parent / "checkpoints" / "iter_000002")[1]
    target = parent_state["learner"]["controller"]["target_entropy"]
    assert target is not None and target > 0
    run_ok(continue_cmd(parent, SMALL, tmp_path, iterations=2))
    child = tmp_path / "child"
    meta = json.loads((child / "meta.json").read_text())
    assert meta["parent"] == str((parent / "checkpoints" / "iter_000002").resolve())
    assert meta["inherited_target_entropy"] == pytest.approx(target)
    rows = [json.loads(l) for l in (child / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]  # fresh iteration counter
    assert json.loads((child / "config.json").read_text())["task"]["name"] == "arith-hard"
    child_state = load_trainer_state(child / "checkpoints" / "iter_000002")[1]
    steps = [s["step"] for s in child_state["learner"]["optimizer"]["state"].values()]
    assert steps and max(float(s) for s in steps) == 2  # a fresh optimizer made exactly 2 steps
    assert child_state["learner"]["controller"]["target_entropy"] == pytest.approx(target)
    assert meta["target_entropy_source"] == "parent" and rows[0]["target_entropy"] == pytest.approx(target)
    # it started from the parent's weights, not the warm start
    assert (
        Path(meta["model"]) == (parent / "checkpoints" / "iter_000002" / "model").resolve()
        or Path(meta["model"]).resolve() == (parent / "checkpoints" / "iter_000002" / "model").resolve()
    )
    # `eprl eval` on the child run's checkpoint reports held-out success for its suite
    proc = run_ok(
        [
            sys.executable,
            "-m",
            "eprl.training",
            "eval",
            str(child),
            "--task",
            str(REPO / "tasks" / "arith_hard.yaml"),
            "--set",
            "task.eval.num_tasks=2",
            "--set",
            "task.eval_samples=2",
            "--set",
            "run.progress=false",
        ]
    )
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert result["model"].endswith("iter_000002/model") and result["eval_tasks"] == 2.0
    assert 0.0 <= result["eval_success"] <= 1.0 and "eval_pass@2" in result


@pytest.mark.slow
def test_continue_can_remeasure_the_target_on_the_new_domain(tmp_path, eprl_cache):
    run_ok(_cmd(eprl_cache, tmp_path, "parent", "run.iterations=1", "run.checkpoint_every=1"))
    parent = tmp_path / "parent"
    target = load_trainer_state(parent / "checkpoints" / "iter_000001")[1]["learner"]["controller"]["target_entropy"]
    run_ok(
        continue_cmd(
            parent, SMALL + ["learner.entropy_control.target_entropy=remeasure"], tmp_path / "re", iterations=1
        )
    )
    child = tmp_path / "re" / "child"
    meta = json.loads((child / "meta.json").read_text())
    assert meta["target_entropy_source"] == "remeasured" and meta["inherited_target_entropy"] is None
    assert meta["parent_target_entropy"] == pytest.approx(target)
    row = json.loads((child / "metrics.jsonl").read_text().splitlines()[0])
    # H* is the new domain's first-iteration entropy, not the parent's
    assert row["target_entropy"] == row["entropy"] and row["target_entropy"] != pytest.approx(target, rel=1e-9)
