"""`eprl plot RUN_DIR...`: entropy, reward and held-out success over iterations, and the pass@k curve
(k = 1..n) of each run's first and last evaluation; runs overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


def _pass_at_k(row: dict) -> tuple[list[int], list[float]]:
    """(k, pass@k) from an eval row's `eval_pass@k` keys, sorted by k."""
    pairs = sorted(
        (int(key.split("@")[1]), v) for key, v in row.items() if key.startswith("eval_pass@") and v is not None
    )
    return [k for k, _ in pairs], [v for _, v in pairs]


def _save(fig, ax, out_dir: Path, stem: str, xlabel: str, ylabel: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{stem}.png"
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_pass_at_k(run_dirs, out_dir: Path, labels) -> Optional[Path]:
    """pass@k against k for each run's first (dashed) and last evaluation; None when no run has k >= 2."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    drawn = False
    for run, label in zip(run_dirs, labels):
        rows = MetricsLog(Path(run) / "eval.jsonl").rows()
        curves = [(rows[0], "--", f"{label} (iter {rows[0].get('iteration')})")] if len(rows) > 1 else []
        curves += [(rows[-1], "-", f"{label} (iter {rows[-1].get('iteration')})")] if rows else []
        for row, style, name in curves:
            ks, values = _pass_at_k(row)
            if len(ks) >= 2:
                ax.plot(ks, values, style, marker="o", ms=3, label=name)
                drawn = True
    if not drawn:
        plt.close(fig)
        return None
    return _save(fig, ax, out_dir, "pass_at_k", "k (samples per task)", "held-out pass@k")


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
        written.append(_save(fig, ax, out_dir, stem, "iteration (updates)", ylabel))
    curve = plot_pass_at_k(run_dirs, out_dir, labels)
    return written + ([curve] if curve else [])
