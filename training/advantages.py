"""Advantage estimators, one scalar per trajectory (docs/algorithms.md, "Advantage estimators").

Registry by name, verl `core_algos` style:

    ADVANTAGE_ESTIMATORS["grpo"](rewards, group_ids, cfg) -> Tensor[N]

The learner broadcasts the per-trajectory advantage to the trajectory's action tokens.
Group estimators (grpo, loo) give groups of size 1 advantage 0 (there is no baseline to compare
against); reinforce_pp normalises over the whole batch instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from eprl.registry import Registry

if TYPE_CHECKING:  # type only: config imports this module's registry
    from eprl.training.config import LearnerConfig

AdvantageFn = Callable[[Tensor, Tensor, "LearnerConfig"], Tensor]
ADVANTAGE_ESTIMATORS: Registry[AdvantageFn] = Registry("advantage estimator", group="eprl.advantages")
register_advantage = ADVANTAGE_ESTIMATORS.register

GRPO_STD_EPS = 1e-6  # the "+ 1e-6" of A_k = (R_k - mean R) / (std R + 1e-6)


def _group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary group ids to 0..G-1; returns (index[N], G)."""
    _, index = torch.unique(group_ids, return_inverse=True)
    return index, int(index.max().item()) + 1 if index.numel() else 0


def _group_sum(values: Tensor, index: Tensor, num_groups: int) -> Tensor:
    return torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add_(0, index, values)


def _no_signal(r: Tensor, index: Tensor, num_groups: int) -> Tensor:
    """Bool[N]: the trajectory's group has all-equal returns (max == min; NaN returns do not compare
    equal, so a NaN reward still reaches the loss and the learner's non-finite guard)."""
    gmax = torch.full((num_groups,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, reduce="amax"
    )
    gmin = torch.full((num_groups,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, index, r, reduce="amin"
    )
    return (gmax == gmin)[index]


@register_advantage("grpo")
def grpo_advantage(rewards: Tensor, group_ids: Tensor, cfg: LearnerConfig) -> Tensor:
    """GRPO: A_k = (R_k - mean(R)) / (std(R) + 1e-6); Dr.GRPO (std_normalize=False): R_k - mean(R).

    std is the unbiased sample std (torch.std default, as in the GRPO/verl reference code);
    our choice, not the paper's, since the paper does not say which.
    Safety rail (docs/algorithms.md, "Safety rails"): the group statistics are float64 and a group
    whose returns are all equal gets exactly 0. In float32, [0.7]*8 has r - mean ~ 6e-8 and std ~ 6e-8,
    so every member got the same-sign advantage +0.056.
    """
    r = rewards.to(torch.float64)
    index, g = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), index, g)
    mean = _group_sum(r, index, g) / count
    centred = r - mean[index]
    adv = centred
    if cfg.std_normalize:
        var = _group_sum(centred**2, index, g) / (count - 1).clamp_min(1)
        adv = centred / (var.sqrt()[index] + GRPO_STD_EPS)
    zero = (count[index] <= 1) | _no_signal(r, index, g)
    return torch.where(zero, torch.zeros_like(adv), adv).to(torch.float32)


@register_advantage("loo")
def loo_advantage(rewards: Tensor, group_ids: Tensor, cfg: LearnerConfig) -> Tensor:
    """LOOP / RLOO: A_k = R_k - mean_{i != k} R_i = (R_k - (sum R - R_k)/(K-1)). No std.
    Float64 sums; all-equal groups get exactly 0 (as grpo)."""
    r = rewards.to(torch.float64)
    index, g = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), index, g)[index]
    total = _group_sum(r, index, g)[index]
    loo_mean = (total - r) / (count - 1).clamp_min(1)
    zero = (count <= 1) | _no_signal(r, index, g)
    return torch.where(zero, torch.zeros_like(r), r - loo_mean).to(torch.float32)


REINFORCE_PP_EPS = 1e-8  # A = (x - mean) / sqrt(var + 1e-8), as verl's masked_whiten


def _batch_whiten(x: Tensor) -> Tensor:
    """(x - mean(x)) / sqrt(var(x) + 1e-8) over the whole batch (unbiased var), float64; exactly 0 when
    every x is equal. Our choice: each trajectory counts once (verl whitens over tokens)."""
    if x.numel() < 2 or bool((x == x[0]).all()):
        return torch.zeros_like(x)
    centred = x - x.mean()
    return centred / torch.sqrt(centred.pow(2).sum() / (x.numel() - 1) + REINFORCE_PP_EPS)


@register_advantage("reinforce_pp")
def reinforce_pp_advantage(rewards: Tensor, group_ids: Tensor, cfg: LearnerConfig) -> Tensor:
    """REINFORCE++ (Hu 2025), outcome reward: A_k = (R_k - mean_batch R) / std_batch R.
    Global normalisation over the whole batch: groups play no part (a singleton gets a non-zero A)."""
    return _batch_whiten(rewards.to(torch.float64)).to(torch.float32)


@register_advantage("reinforce_pp_baseline")
def reinforce_pp_baseline_advantage(rewards: Tensor, group_ids: Tensor, cfg: LearnerConfig) -> Tensor:
    """REINFORCE++-baseline (Hu 2025): x_k = R_k - mean_group R, then A = (x - mean_batch x) / std_batch x.
    Singletons and all-equal groups have x = 0 (they still take part in the batch statistics)."""
    r = rewards.to(torch.float64)
    index, g = _group_index(group_ids)
    count = _group_sum(torch.ones_like(r), index, g)
    x = r - (_group_sum(r, index, g) / count)[index]
    x = torch.where((count[index] <= 1) | _no_signal(r, index, g), torch.zeros_like(x), x)
    return _batch_whiten(x).to(torch.float32)


def compute_advantages(name: str, rewards: Tensor, group_ids: Tensor, cfg: LearnerConfig) -> Tensor:
    """Dispatch by name; float32 [N] advantages, one per trajectory."""
    return ADVANTAGE_ESTIMATORS.get(name)(rewards, group_ids, cfg).to(torch.float32)


def informative_groups(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """Bool[N]: False where the trajectory's group has all-equal returns (no learning signal).

    Singletons count as uninformative (their advantage is 0 under every estimator).
    """
    r = rewards.to(torch.float32)
    index, g = _group_index(group_ids)
    gmax = torch.full((g,), -torch.inf, device=r.device).scatter_reduce(0, index, r, reduce="amax")
    gmin = torch.full((g,), torch.inf, device=r.device).scatter_reduce(0, index, r, reduce="amin")
    return (gmax > gmin)[index]


def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float) -> Tensor:
    """DAPO soft overlong punishment, added to the return:

        0                                           if len <= max_len - buffer
        -penalty * (len - (max_len - buffer)) / buffer   if max_len - buffer < len <= max_len
        -penalty                                    if len > max_len
    buffer == 0 turns it off.
    """
    lengths = lengths.to(torch.float32)
    if buffer <= 0:
        return torch.zeros_like(lengths)
    excess = (lengths - (max_len - buffer)).clamp(min=0.0, max=float(buffer))
    return -penalty * excess / buffer
