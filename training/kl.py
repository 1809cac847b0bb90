"""KL estimators against a reference policy (docs/algorithms.md, "Safety rails").

Registry by name, with d = logp - logp_ref per action token:
    k1 = d                                   (unbiased, high variance, can be negative)
    k2 = d^2 / 2                             ("mse"; its gradient is the one of KL's second-order term)
    k3 = exp(-d) + d - 1                     (Schulman's low-variance estimator, >= 0; verl's low_var_kl)
k3 clamps -d to [-20, 20] before exp and the value to [-10, 10], so one token with a huge ratio
costs at most 10 instead of e^25 (the bounds are verl's). A "+" suffix (k1+, k3+) is the
straight-through variant: the value of k1 / k3, the gradient of k2 (unbiased gradient of the KL).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

LOG_RATIO_MAX = 20.0  # bound on |log r| before any exp, everywhere a ratio is formed
K3_MAX = 10.0  # bound on |k3|

KlFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: dict[str, KlFn] = {}


def register_kl(name: str) -> Callable[[KlFn], KlFn]:
    def deco(fn: KlFn) -> KlFn:
        KL_ESTIMATORS[name] = fn
        return fn

    return deco


@register_kl("k1")
def k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - logp_ref."""
    return logp - ref_logp


@register_kl("k2")
def k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = (logp - logp_ref)^2 / 2."""
    return 0.5 * (logp - ref_logp).square()


@register_kl("k3")
def k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(u) - u - 1, u = clamp(logp_ref - logp, -20, 20); value clamped to [-10, 10]."""
    u = (ref_logp - logp).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
    return (torch.exp(u) - u - 1.0).clamp(-K3_MAX, K3_MAX)


def _straight_through(value_fn: KlFn) -> KlFn:
    def fn(logp: Tensor, ref_logp: Tensor) -> Tensor:
        grad_part = k2(logp, ref_logp)
        return value_fn(logp, ref_logp).detach() + grad_part - grad_part.detach()

    fn.__doc__ = f"value of {value_fn.__name__}, gradient of k2 (straight-through)"
    return fn


KL_ESTIMATORS["k1+"] = _straight_through(k1)
KL_ESTIMATORS["k3+"] = _straight_through(k3)


def kl_estimate(name: str, logp: Tensor, ref_logp: Tensor) -> Tensor:
    if name not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {name!r}; registered: {sorted(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[name](logp, ref_logp)
