"""The AppWorld task suite trains end to end with the tiny model on the stand-in world (pipeline check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from eprl.envs.appworld.setup import missing_reason, venv_dir, venv_ready
from eprl.training.config import load_run_config
from eprl.training.loop import train
from eprl.training.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.appworld, pytest.mark.slow]


def test_appworld_suite_trains_and_evaluates_with_tgc_sgc(tmp_path, eprl_cache):
    if not venv_ready():
        pytest.skip(f"AppWorld venv not found at {venv_dir()}; run `eprl appworld-setup`")
    if missing_reason():
        pytest.skip(missing_reason())
    cfg = load_run_config(
        REPO / "tasks" / "appworld.yaml",
        overrides=[
            "model.tiny_sft_steps=30",
            f"model.cache_dir={eprl_cache}",
            "task.group_size=2",
            "task.tasks_per_iteration=1",
            "task.eval.num_tasks=1",
            "task.sampling.max_new_tokens=32",
            "task.eval_sampling.max_new_tokens=32",
            "run.iterations=1",
            "run.progress=false",
            f"run.out_dir={tmp_path}",
            "run.name=aw",
        ],
    )
    summary = train(cfg)
    rows = read_metrics(summary["run_dir"])
    assert len(rows) == 1 and rows[0]["episodes"] == 2
    assert rows[0]["action_tokens"] > 0
    evals = [l for l in (Path(summary["run_dir"]) / "eval.jsonl").read_text().splitlines()]
    assert len(evals) == 2 and all('"eval_tgc"' in e and '"eval_appworld_standin": 1.0' in e for e in evals)
