import math

import pytest
import torch

from eprl.training.advantages import compute_advantages, informative_groups, overlong_penalty
from eprl.training.config import LearnerConfig

torch.set_num_threads(1)


def _std(xs):  # unbiased sample std, by hand
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.2, 0.9, 3.0]
GROUPS = [7, 7, 7, 7, 2, 2, 2, 2, 5]  # two groups of 4 (ids not contiguous-from-0), a singleton


def _expected(kind):
    out = []
    for r, g in zip(REWARDS, GROUPS):
        grp = [x for x, h in zip(REWARDS, GROUPS) if h == g]
        if len(grp) == 1:
            out.append(0.0)
        elif kind == "grpo":
            out.append((r - sum(grp) / len(grp)) / (_std(grp) + 1e-6))
        elif kind == "drgrpo":
            out.append(r - sum(grp) / len(grp))
        else:  # loo
            others = list(grp)
            others.remove(r)
            out.append(r - sum(others) / len(others))
    return out


@pytest.mark.parametrize(
    "kind,cfg",
    [
        ("grpo", LearnerConfig()),
        ("drgrpo", LearnerConfig(std_normalize=False)),
        ("loo", LearnerConfig(advantage="loo")),
    ],
)
def test_estimators_against_hand_computation(kind, cfg):
    adv = compute_advantages(cfg.advantage, torch.tensor(REWARDS), torch.tensor(GROUPS), cfg)
    assert adv.dtype == torch.float32 and adv.shape == (9,)
    assert adv.tolist() == pytest.approx(_expected(kind), abs=1e-6)


def test_grpo_known_values():
    # group [1,0,0,1]: mean .5, sample std sqrt(1/3) -> +-0.5*sqrt(3)
    adv = compute_advantages(
        "grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), LearnerConfig()
    )
    assert adv.tolist() == pytest.approx([0.8660229, -0.8660229, -0.8660229, 0.8660229], abs=1e-5)
    # loo on [1,0,0,1]: 1 - 1/3 = 2/3, 0 - 2/3
    adv = compute_advantages(
        "loo", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), LearnerConfig()
    )
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-6)


GROUP_ESTIMATORS = ["grpo", "loo"]


def test_all_equal_group_and_singletons_are_zero():
    r = torch.tensor([0.3, 0.3, 0.3, 5.0])
    g = torch.tensor([0, 0, 0, 1])
    for name in GROUP_ESTIMATORS:
        assert compute_advantages(name, r, g, LearnerConfig()).tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("value,k", [(0.7, 8), (3 / 7, 16), (0.1, 16)])
@pytest.mark.parametrize("std_normalize", [True, False])
def test_all_equal_non_binary_group_gets_exactly_zero(value, k, std_normalize):
    # Issue #10: with float32 group statistics these gave +0.056, +0.082 and -0.0147 to every member.
    cfg = LearnerConfig(std_normalize=std_normalize)
    for name in GROUP_ESTIMATORS:
        adv = compute_advantages(name, torch.full((k,), value), torch.zeros(k, dtype=torch.long), cfg)
        assert adv.tolist() == [0.0] * k, name


def test_every_fraction_up_to_tenths_in_groups_of_8_is_zero_when_all_equal():
    # "fraction of unit tests passed": k/n for n <= 10 (33 distinct fractions, 14 hit the float32 bug)
    fractions = sorted({k / n for n in range(1, 11) for k in range(n + 1)})
    assert len(fractions) == 33
    rewards = torch.tensor([f for f in fractions for _ in range(8)])
    groups = torch.arange(33).repeat_interleave(8)
    for name in GROUP_ESTIMATORS + ["reinforce_pp_baseline"]:
        assert compute_advantages(name, rewards, groups, LearnerConfig()).abs().max().item() == 0.0, name


def test_reinforce_pp_normalises_over_the_whole_batch():
    # [1,0,0,0]: mean 1/4, unbiased var (9/16 + 3/16)/3 = 1/4, std 1/2 -> [1.5, -0.5, -0.5, -0.5];
    # the groups play no part (two groups of 2, or four singletons, give the same)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for g in ([0, 0, 1, 1], [0, 1, 2, 3]):
        adv = compute_advantages("reinforce_pp", r, torch.tensor(g), LearnerConfig(advantage="reinforce_pp"))
        assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-6)
    equal = compute_advantages("reinforce_pp", torch.full((6,), 0.7), torch.arange(6), LearnerConfig())
    assert equal.tolist() == [0.0] * 6


def test_reinforce_pp_baseline_subtracts_group_mean_then_normalises_globally():
    # groups [1,0], [1,1], [3]: x = [.5, -.5, 0, 0, 0]; batch mean 0, unbiased var .5/4 = 1/8
    # -> A = x / sqrt(1/8) = [sqrt(2), -sqrt(2), 0, 0, 0]
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 3.0])
    adv = compute_advantages("reinforce_pp_baseline", r, torch.tensor([4, 4, 9, 9, 2]), LearnerConfig())
    assert adv.tolist() == pytest.approx([math.sqrt(2), -math.sqrt(2), 0.0, 0.0, 0.0], abs=1e-6)


def test_unknown_estimator_lists_registered():
    with pytest.raises(ValueError, match="grpo.*loo|loo.*grpo"):
        compute_advantages("nope", torch.zeros(2), torch.zeros(2, dtype=torch.long), LearnerConfig())


def test_informative_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2.0])
    g = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    assert informative_groups(r, g).tolist() == [False, False, False, False, True, True, False, False]


def test_overlong_penalty_values():
    lengths = torch.tensor([10, 60, 70, 75, 80, 81, 200])
    # max_len 80, buffer 20: free up to 60, then linear to -penalty at 80 (and beyond)
    out = overlong_penalty(lengths, max_len=80, buffer=20, penalty=2.0)
    assert out.tolist() == pytest.approx([0.0, 0.0, -1.0, -1.5, -2.0, -2.0, -2.0])
    assert overlong_penalty(lengths, max_len=80, buffer=0, penalty=2.0).tolist() == [0.0] * 7
