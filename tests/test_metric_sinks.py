"""Metric sinks (training/metrics.py): rows go to every sink named in run.metric_sinks; JSONL is always one
of them; the TensorBoard sink's event files read back (tensorboard's own EventAccumulator) with the values
written, and a resume hides what a killed run logged after its checkpoint."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runs import SMALL

from eprl.training.config import ConfigError, load_run_config
from eprl.training.metrics import MetricStream, read_metrics

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks" / "default.yaml"
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="the tensorboard package is not installed (pip install tensorboard)",
)


@pytest.mark.parametrize(
    "sinks, message",
    [
        (
            "[jsonl, wandb]",
            "run.metric_sinks: Value error, unknown metric sink 'wandb'; registered: jsonl, tensorboard",
        ),
        ("[tensorboard]", "run.metric_sinks: Value error, name each sink once, jsonl among them"),
        ("[jsonl, jsonl]", "run.metric_sinks: Value error, name each sink once, jsonl among them"),
    ],
)
def test_unknown_or_missing_sinks_are_refused(sinks, message):
    with pytest.raises(ConfigError) as err:
        load_run_config(TASK, overrides=[f"run.metric_sinks={sinks}"])
    assert message in str(err.value)


def _scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


@needs_tensorboard
def test_tensorboard_sink_reads_back_and_a_resume_hides_the_killed_rows(tmp_path):
    stream = MetricStream(tmp_path, "metrics", ["jsonl", "tensorboard"])
    for i, reward in enumerate([0.25, 0.5, 0.75, 1.0]):
        stream.append({"iteration": i, "reward_mean": reward, "episodes": 6, "note": "text is skipped"})
    stream.close()
    assert _scalars(tmp_path / "tensorboard" / "metrics", "reward_mean") == [(0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0)]
    assert _scalars(tmp_path / "tensorboard" / "metrics", "episodes") == [(i, 6.0) for i in range(4)]

    resumed = MetricStream(tmp_path, "metrics", ["jsonl", "tensorboard"])  # killed after the checkpoint at 2
    resumed.truncate_after(1)
    resumed.append({"iteration": 2, "reward_mean": 0.125})
    resumed.close()
    assert _scalars(tmp_path / "tensorboard" / "metrics", "reward_mean") == [(0, 0.25), (1, 0.5), (2, 0.125)]
    assert [r["reward_mean"] for r in read_metrics(tmp_path)] == [0.25, 0.5, 0.125]


@needs_tensorboard
def test_a_run_with_the_tensorboard_sink(tmp_path, eprl_cache):
    from eprl.training.loop import train

    cfg = load_run_config(
        TASK,
        overrides=[
            *SMALL,
            f"model.cache_dir={eprl_cache}",
            "run.device=cpu",
            "run.iterations=1",
            f"run.out_dir={tmp_path}",
            "run.name=tb",
            "run.metric_sinks=[jsonl, tensorboard]",
        ],
    )
    run = Path(train(cfg)["run_dir"])
    rows = read_metrics(run)
    assert _scalars(run / "tensorboard" / "metrics", "reward_mean") == [(0, round(rows[0]["reward_mean"], 6))]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert _scalars(run / "tensorboard" / "eval", "eval_success") == [
        (e["iteration"], e["eval_success"]) for e in evals
    ]


def test_tensorboard_sink_without_the_package_is_refused_in_one_line(tmp_path):
    hide = "import sys; sys.modules['tensorboard'] = None; from eprl.training.cli import main; main(sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", hide, "train", "--set", "run.metric_sinks=[jsonl, tensorboard]"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "eprl: error: run.metric_sinks: metric sink 'tensorboard': cannot load "
        "'eprl.training.tensorboard_sink:TensorBoardSink': run.metric_sinks=tensorboard needs the tensorboard "
        "package: pip install tensorboard (or eprl[tensorboard])"
    ]
