"""select_groups: the pure step between rollout and collation (training/select.py), on hand-made trajectories."""

from __future__ import annotations

from eprl.agents.trajectory import Trajectory
from eprl.training.config import LearnerConfig
from eprl.training.select import informative_group_count, select_groups


def _traj(group: int, reward: float) -> Trajectory:
    return Trajectory(
        [1, 2, 3], [0, 1, 1], [0.0, -1.0, -1.0], [(1, 3)], reward, reward > 0, f"t{group}", group, "terminated"
    )


def _episodes(rewards_by_group: dict[int, list[float]]) -> list[Trajectory]:
    return [_traj(g, r) for g, rs in rewards_by_group.items() for r in rs]


# groups 0 and 2 informative (returns differ), 1 all-zero, 3 all-one, 4 a singleton, 5 informative
EPISODES = _episodes({0: [0.0, 1.0], 1: [0.0, 0.0], 2: [0.5, 0.0, 0.5], 3: [1.0, 1.0], 4: [1.0], 5: [1.0, 0.0]})


def _groups(trajs) -> list[int]:
    return [t.group_id for t in trajs]


def test_keeps_everything_by_default():
    kept = select_groups(EPISODES, LearnerConfig(), tasks_per_iteration=2)
    assert kept == EPISODES and kept is not EPISODES


def test_drop_zero_advantage_drops_equal_return_groups_and_singletons():
    kept = select_groups(EPISODES, LearnerConfig(drop_zero_advantage=True), tasks_per_iteration=2)
    assert _groups(kept) == [0, 0, 2, 2, 2, 5, 5]  # every informative group, in the original order
    assert all(a is b for a, b in zip(kept, [t for t in EPISODES if t.group_id in (0, 2, 5)]))


def test_dynamic_sampling_trims_to_the_first_target_groups():
    kept = select_groups(EPISODES, LearnerConfig(dynamic_sampling=True), tasks_per_iteration=2)
    assert _groups(kept) == [0, 0, 2, 2, 2]
    # fewer informative groups than wanted: all of them
    assert _groups(select_groups(EPISODES, LearnerConfig(dynamic_sampling=True), tasks_per_iteration=9)) == [
        0,
        0,
        2,
        2,
        2,
        5,
        5,
    ]


def test_trims_by_group_id_not_by_position():
    shuffled = [EPISODES[i] for i in (10, 0, 4, 11, 1, 5, 6)]  # groups 5, 0, 2, 5, 0, 2, 2
    kept = select_groups(shuffled, LearnerConfig(dynamic_sampling=True), tasks_per_iteration=2)
    assert _groups(kept) == [0, 2, 0, 2, 2]


def test_nothing_informative_and_empty_input():
    flat = _episodes({0: [0.0, 0.0], 1: [1.0, 1.0]})
    assert select_groups(flat, LearnerConfig(drop_zero_advantage=True), 2) == []
    assert select_groups([], LearnerConfig(dynamic_sampling=True), 2) == []
    assert informative_group_count(flat) == 0 and informative_group_count([]) == 0


def test_informative_group_count():
    assert informative_group_count(EPISODES) == 3


def test_input_is_not_modified():
    before = [(id(t), t.group_id, t.reward) for t in EPISODES]
    select_groups(EPISODES, LearnerConfig(dynamic_sampling=True, drop_zero_advantage=True), 1)
    assert [(id(t), t.group_id, t.reward) for t in EPISODES] == before
