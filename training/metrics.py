"""Per-iteration metrics: one JSON object per line in RUN_DIR/metrics.jsonl."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .checkpoint import atomic_write_text


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
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


def read_metrics(run_dir: str | Path) -> list[dict]:
    return MetricsLog(Path(run_dir) / "metrics.jsonl").rows()
