"""Held-out evaluation: success rate (mean over samples = pass@1) and unbiased pass@k for every k = 1..n
(n = the fewest samples any task got): the pass@k curve that `eprl plot` draws."""

from __future__ import annotations

from collections import defaultdict
from math import comb

import numpy as np
import torch


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
    out = {
        f"{prefix}success": float(np.mean([t.success for t in trajectories])),
        f"{prefix}reward": float(np.mean([t.reward for t in trajectories])),
        f"{prefix}tasks": float(len(by_task)),
    }
    for k in range(1, n + 1):
        out[f"{prefix}pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in by_task.values()]))
    return out


def evaluate(runner, num_tasks: int, samples: int, sampling, seed: int, prefix: str = "eval_") -> dict[str, float]:
    trajectories, stats = runner.run(list(range(num_tasks)), samples, sampling, seed=seed, desc="eval")
    env_metrics = {f"{prefix}{k}": v for k, v in runner.episode_metrics(trajectories).items()}
    return {**summarize(trajectories, prefix), **env_metrics, f"{prefix}seconds": stats.wall_seconds}


def evaluate_suite(runner, num_tasks: int, cfg) -> dict[str, float]:
    """`evaluate` with a run config's eval settings and seeds (a run's eval.jsonl rows and `eprl eval` alike);
    the torch RNG stream outside is left as it was (evaluation never shifts training's)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed + 7919)
        return evaluate(runner, num_tasks, cfg.task.eval_samples, cfg.task.eval_sampling, seed=cfg.run.seed)


def eval_line(iteration: int, result: dict, samples: int) -> str:
    return (
        f"[eval] after {iteration} updates: success {result['eval_success']:.3f} "
        f"({int(result['eval_tasks'])} held-out tasks x {samples})"
    )
