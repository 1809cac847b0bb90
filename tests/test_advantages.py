import math

import pytest
import torch

from training.advantages import (ADVANTAGE_ESTIMATORS, compute_advantages, informative_groups,
                                 overlong_penalty)
from training.config import LearnerConfig

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


@pytest.mark.parametrize("kind,cfg", [("grpo", LearnerConfig()), ("drgrpo", LearnerConfig(std_normalize=False)),
                                      ("loo", LearnerConfig(advantage="loo"))])
def test_estimators_against_hand_computation(kind, cfg):
    adv = compute_advantages(cfg.advantage, torch.tensor(REWARDS), torch.tensor(GROUPS), cfg)
    assert adv.dtype == torch.float32 and adv.shape == (9,)
    assert adv.tolist() == pytest.approx(_expected(kind), abs=1e-6)


def test_grpo_known_values():
    # group [1,0,0,1]: mean .5, sample std sqrt(1/3) -> +-0.5*sqrt(3)
    adv = compute_advantages("grpo", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), LearnerConfig())
    assert adv.tolist() == pytest.approx([0.8660229, -0.8660229, -0.8660229, 0.8660229], abs=1e-5)
    # loo on [1,0,0,1]: 1 - 1/3 = 2/3, 0 - 2/3
    adv = compute_advantages("loo", torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), LearnerConfig())
    assert adv.tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3], abs=1e-6)


def test_all_equal_group_and_singletons_are_zero():
    r = torch.tensor([0.3, 0.3, 0.3, 5.0])
    g = torch.tensor([0, 0, 0, 1])
    for name in ADVANTAGE_ESTIMATORS:
        assert compute_advantages(name, r, g, LearnerConfig()).tolist() == [0.0, 0.0, 0.0, 0.0]


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
