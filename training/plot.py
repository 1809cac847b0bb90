"""`eprl plot RUN_DIR...`: entropy, reward and held-out success over iterations, runs overlaid."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import MetricsLog  # noqa: E402

PANELS = [  # (file stem, source file, metric key, y label)
    ("entropy", "metrics.jsonl", "entropy", "mean action-token entropy (nats)"),
    ("reward", "metrics.jsonl", "reward_mean", "training reward"),
    ("eval_success", "eval.jsonl", "eval_success", "held-out success rate"),
    ("clip_frac", "metrics.jsonl", "clip_frac_high", "upper clip fraction"),
]


def plot_runs(run_dirs, out_dir, labels=None) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = labels or [Path(r).name for r in run_dirs]
    written = []
    for stem, source, key, ylabel in PANELS:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        drawn = False
        for run, label in zip(run_dirs, labels):
            rows = [r for r in MetricsLog(Path(run) / source).rows() if r.get(key) is not None]
            if rows:
                ax.plot([r["iteration"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=label)
                drawn = True
        if not drawn:
            plt.close(fig)
            continue
        ax.set_xlabel("iteration (updates)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        tmp = path.with_name(f".{path.stem}.tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written
