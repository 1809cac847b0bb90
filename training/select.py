"""Which groups of an iteration's episodes are trained on: the one step between rollout and collation.

    select_groups(trajectories, learner_cfg, tasks_per_iteration) -> the trajectories to collate

- `drop_zero_advantage` or `dynamic_sampling`: groups whose returns are all equal carry no learning signal
  (their advantage is 0 under every estimator) and are dropped.
- `dynamic_sampling` (DAPO): the informative groups are trimmed to the first `tasks_per_iteration` group ids,
  so the update sees exactly the target number of groups when the refill rounds found enough.
`informative_group_count` is what the refill loop (Trainer.collect) checks after each round.

Overlong shaping (`overlong_buffer`) stays in the learner (Learner.advantages): it changes rewards, not which
groups are kept, and is computed from the collated batch; group dropping looks at the unshaped returns.
Pure: no model, no RNG, the input list is not modified.
"""

from __future__ import annotations

from typing import Sequence

import torch

from eprl.agents.trajectory import Trajectory

from .advantages import informative_groups
from .config import LearnerConfig


def _informative(trajectories: Sequence[Trajectory]) -> list[bool]:
    if not trajectories:
        return []
    return informative_groups(
        torch.tensor([float(t.reward) for t in trajectories], dtype=torch.float32),
        torch.tensor([t.group_id for t in trajectories]),
    ).tolist()


def informative_group_count(trajectories: Sequence[Trajectory]) -> int:
    """Number of groups whose returns are not all equal."""
    return len({t.group_id for t, k in zip(trajectories, _informative(trajectories)) if k})


def select_groups(
    trajectories: Sequence[Trajectory], learner_cfg: LearnerConfig, tasks_per_iteration: int
) -> list[Trajectory]:
    """The trajectories to train on, in their original order (see the module docstring)."""
    kept = list(trajectories)
    if not (learner_cfg.drop_zero_advantage or learner_cfg.dynamic_sampling):
        return kept
    kept = [t for t, k in zip(kept, _informative(kept)) if k]
    if learner_cfg.dynamic_sampling:
        wanted = set(sorted({t.group_id for t in kept})[:tasks_per_iteration])
        kept = [t for t in kept if t.group_id in wanted]
    return kept
