"""Held-out evaluation: success rate (mean over samples = pass@1) and unbiased pass@k for every k = 1..n
(n = the fewest samples any task got): the pass@k curve that `eprl plot` draws."""
from __future__ import annotations

from collections import defaultdict
from math import comb

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c successes (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def summarize(trajectories, prefix: str = "eval_") -> dict[str, float]:
    by_task: dict[int, list[bool]] = defaultdict(list)
    for t in trajectories:
        by_task[t.group_id].append(bool(t.success))
    n = min(len(v) for v in by_task.values())
    out = {f"{prefix}success": float(np.mean([t.success for t in trajectories])),
           f"{prefix}reward": float(np.mean([t.reward for t in trajectories])),
           f"{prefix}tasks": float(len(by_task))}
    for k in range(1, n + 1):
        out[f"{prefix}pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in by_task.values()]))
    return out


def evaluate(runner, num_tasks: int, samples: int, sampling, seed: int, prefix: str = "eval_") -> dict[str, float]:
    trajectories, stats = runner.run(list(range(num_tasks)), samples, sampling, seed=seed, desc="eval")
    env_metrics = {f"{prefix}{k}": v for k, v in runner.episode_metrics(trajectories).items()}
    return {**summarize(trajectories, prefix), **env_metrics, f"{prefix}seconds": stats.wall_seconds}
