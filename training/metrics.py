"""Per-iteration metrics: each row goes to every sink in `run.metric_sinks` (METRIC_SINKS, by name).

`jsonl` (RUN_DIR/metrics.jsonl and eval.jsonl, one JSON object per line) is always among them: it is the
record a run reads back (resume, the final eval, summary.json, `eprl plot`). Other sinks only receive rows.
A sink is built by `factory(run_dir, stream)` (stream: "metrics" or "eval") and has `append(row)`,
`truncate_after(iteration)` (resume: rows of a killed run after its checkpoint never happened) and `close()`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from eprl.registry import Registry

from .checkpoint import atomic_write_text

METRIC_SINKS: Registry[Callable[[Path, str], Any]] = Registry("metric sink", group="eprl.metric_sinks")
METRIC_SINKS.register("tensorboard", "eprl.training.tensorboard_sink:TensorBoardSink")


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """One JSONL file of rows: written as they come, read back whole."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and not text.endswith("\n"):
            try:
                json.loads(lines[-1])
            except ValueError:  # a row torn by a kill or a full disk mid-append: it never happened
                lines.pop()
        return [json.loads(line) for line in lines]

    def append(self, row: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")
            fh.flush()

    def truncate_after(self, iteration: int) -> None:
        """On resume, drop rows a killed run wrote after its last checkpoint."""
        keep = [r for r in self.rows() if r.get("iteration", -1) <= iteration]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def close(self) -> None:
        pass


@METRIC_SINKS.register("jsonl")
def jsonl_sink(run_dir: Path, stream: str) -> MetricsLog:
    return MetricsLog(Path(run_dir) / f"{stream}.jsonl")


class MetricStream:
    """One stream of rows ("metrics" or "eval") fanned out to the configured sinks; `rows()` and `path` are
    its JSONL file's."""

    def __init__(self, run_dir: Path, stream: str, sinks: list[str] | tuple[str, ...] = ("jsonl",)):
        self.jsonl = jsonl_sink(run_dir, stream)
        self.path = self.jsonl.path
        self.sinks = [
            self.jsonl if name == "jsonl" else METRIC_SINKS.get(name)(Path(run_dir), stream) for name in sinks
        ]
        if self.jsonl not in self.sinks:
            self.sinks.insert(0, self.jsonl)

    def rows(self) -> list[dict]:
        return self.jsonl.rows()

    def append(self, row: dict) -> None:
        for sink in self.sinks:
            sink.append(row)

    def truncate_after(self, iteration: int) -> None:
        for sink in self.sinks:
            sink.truncate_after(iteration)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    return MetricsLog(Path(run_dir) / "metrics.jsonl").rows()
