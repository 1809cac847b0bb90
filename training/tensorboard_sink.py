"""The `tensorboard` metric sink: each row's numbers as scalars at step = its iteration, under
RUN_DIR/tensorboard/<stream>/ (`tensorboard --logdir RUN_DIR/tensorboard`). Needs the tensorboard package."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # torch's own message asks for a version; say what to install
    raise ImportError(
        "run.metric_sinks=tensorboard needs the tensorboard package: pip install tensorboard (or eprl[tensorboard])"
    ) from None


class TensorBoardSink:
    def __init__(self, run_dir: Path, stream: str):
        self.log_dir = Path(run_dir) / "tensorboard" / stream
        self.writer: Optional[SummaryWriter] = None  # opened at the first row: ranks other than 0 write none
        self.purge_step: Optional[int] = None

    def append(self, row: dict) -> None:
        if self.writer is None:
            self.writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        step = int(row["iteration"])
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()  # one row per iteration: cheap, and a killed run keeps what it logged

    def truncate_after(self, iteration: int) -> None:
        """Event files are append-only: the next writer marks a restart at iteration + 1, and TensorBoard
        hides the killed run's events from that step on."""
        self.close()
        self.purge_step = iteration + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
