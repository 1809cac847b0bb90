"""One iteration's episodes: which tasks, which seeds, and DAPO's refill rounds.

Everything here is a pure function of (run seed, iteration, round) and the policy's weights, so the
synchronous loop (training/loop.py) and the overlapped sampler process (training/overlap.py) draw the
same tasks for the same iteration.

    tasks(iteration, round)  = rng([seed, iteration, round]).choice(num_tasks, tasks_per_iteration)
    env seed of episode n    = seed * 1_000_003 + iteration * 101 + round + n
"""

from __future__ import annotations

import numpy as np

from .select import informative_group_count


def sample_tasks(seed: int, iteration: int, round_: int, count: int, num_tasks: int | None) -> list[int]:
    """Task indices for one iteration: a pure function of (seed, iteration, round) = the data position."""
    rng = np.random.default_rng([seed, iteration, round_])
    if num_tasks is None:
        return rng.integers(0, 2**31 - 1, size=count).tolist()
    return rng.choice(num_tasks, size=count, replace=count > num_tasks).tolist()


def collect_episodes(cfg, runner, iteration: int, num_tasks: int | None):
    """(trajectories, per-round RolloutStats, refill rounds) of iteration `iteration` with `runner`.

    With `learner.dynamic_sampling`, more groups are sampled (group ids continue) until enough are
    informative or `max_resample_rounds` is reached."""
    suite, lc = cfg.task, cfg.learner
    trajectories: list = []
    stats: list = []
    rounds = 0
    while True:
        tasks = sample_tasks(cfg.run.seed, iteration, rounds, suite.tasks_per_iteration, num_tasks)
        new, st = runner.run(
            tasks, suite.group_size, suite.sampling, seed=cfg.run.seed * 1_000_003 + iteration * 101 + rounds
        )
        offset = 1 + max((t.group_id for t in trajectories), default=-1)
        for t in new:
            t.group_id += offset
        trajectories += new
        stats.append(st)
        if not lc.dynamic_sampling:
            break
        if informative_group_count(trajectories) >= suite.tasks_per_iteration or rounds >= lc.max_resample_rounds:
            break
        rounds += 1
    return trajectories, stats, rounds
