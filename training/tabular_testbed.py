"""Closed-loop entropy testbed: a tabular softmax policy on a contextual bandit, trained with the
real advantage estimators, losses and entropy controllers (no LLM, no parameter sharing). Seconds on
a CPU: check what a learner configuration does to the entropy before spending GPU hours on it.

Each iteration: every state draws a group of G actions from pi(.|s) = softmax(theta[s]), rewards are
Bernoulli(q[s, a]), advantages come from `compute_advantages`, the controller shapes them, and
`compute_policy_loss` drives `epochs x minibatches` SGD steps on theta. The controller then sees the
pre-update mean entropy H (exact, over all states), as in the learner. Here Theorem 1's first-order
picture holds per state, so the controllers' levers act as docs/algorithms.md describes.
"""

from __future__ import annotations

import math

import torch

from eprl.training.advantages import compute_advantages
from eprl.training.config import ConfigError, LearnerConfig
from eprl.training.entropy_control import make_controller
from eprl.training.losses import LossInputs, compute_policy_loss

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}  # Adam: the LM learner's optimizer (AdamW, no decay)


def run_tabular(
    cfg: LearnerConfig,
    *,
    iterations: int = 60,
    states: int = 64,
    actions: int = 8,
    group: int = 8,
    lr: float = 1.0,
    init_scale: float = 1.0,
    seed: int = 0,
    optimizer: str = "sgd",
) -> dict[str, list[float]]:
    """`optimizer="adam"` preconditions the step per logit: Theorem 1's first-order picture assumes the plain
    gradient step, so a controller that cancels the predicted drop under SGD need not under Adam."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"tabular testbed: optimizer {optimizer!r} is not one of {sorted(OPTIMIZERS)}")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.nn.Parameter(init_scale * torch.randn(states, actions, generator=gen, dtype=torch.float64))
    q = torch.rand(states, actions, generator=gen, dtype=torch.float64)  # success probability per (s, a)
    opt = OPTIMIZERS[optimizer]([theta], lr=lr)
    ctl = make_controller(cfg)
    group_ids = torch.arange(states).repeat_interleave(group)
    rows = torch.arange(states).repeat_interleave(group)
    out: dict[str, list[float]] = {"entropy": [], "reward": [], "zeta": [], "eps_high": []}
    for _ in range(iterations):
        with torch.no_grad():
            logp_all = torch.log_softmax(theta, -1)
            h_state = -(logp_all.exp() * logp_all).sum(-1)
            acts = torch.multinomial(logp_all.exp(), group, replacement=True, generator=gen).flatten()
            reward = torch.bernoulli(q[rows, acts], generator=gen)
            old_logp = logp_all[rows, acts][:, None]
        adv = compute_advantages(cfg.advantage, reward, group_ids, cfg)
        for _epoch in range(cfg.epochs):
            for mb in torch.randperm(len(rows), generator=gen).chunk(cfg.minibatches):
                logp_all_now = torch.log_softmax(theta, -1)
                logp = logp_all_now[rows[mb], acts[mb]][:, None]
                ent = -(logp_all_now.exp() * logp_all_now).sum(-1)[rows[mb]][:, None]
                mask = torch.ones_like(logp)
                shaped = ctl.shape_advantages(adv[mb, None].to(logp.dtype), logp.detach(), ent.detach(), mask)
                loss, _ = compute_policy_loss(
                    cfg,
                    LossInputs(logp=logp, old_logp=old_logp[mb], advantages=shaped, mask=mask, entropy=ent),
                    overrides=ctl.loss_overrides(),
                    max_len_norm=1,
                    modifier=ctl.token_modifier,
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
        h = float(h_state.mean())
        ctl.update(h)
        out["entropy"].append(h)
        out["reward"].append(float(reward.mean()))
        out["zeta"].append(getattr(ctl, "zeta", float("nan")))
        out["eps_high"].append(ctl.loss_overrides().get("eps_high", cfg.eps_high))
    return out


def tail_rel(entropy: list[float], window: int = 10) -> float:
    """Mean entropy of the last `window` iterations relative to iteration 0's (the controller's H*), minus 1."""
    return sum(entropy[-window:]) / window / entropy[0] - 1.0


STARTS = {"flat": dict(init_scale=1.0, lr=30.0), "peaked": dict(init_scale=3.0, lr=30.0)}  # H0 ~ 1.7 / ~ 0.8 nats


def entropy_check(
    cfg: LearnerConfig,
    *,
    seeds: list[int],
    iterations: int = 60,
    start: str = "peaked",
    band: float = 0.10,
    window: int = 10,
) -> dict:
    """`cfg` and the same learner without entropy control, side by side on the testbed: per seed, the mean
    entropy of the last `window` iterations relative to iteration 0's, and whether it is within +-band.
    The testbed's SGD step size is its own (tabular logits); every other learner field is `cfg`'s."""
    if start not in STARTS:
        raise ConfigError(f"entropy-check: --start {start!r} is unknown; choose one of {sorted(STARTS)}")
    if window >= iterations:
        raise ConfigError(
            f"entropy-check: --iterations ({iterations}) must be larger than the averaging window ({window})"
        )
    baseline = cfg.model_copy(update={"entropy_control": cfg.entropy_control.model_copy(update={"type": "none"})})
    out = {}
    for name, c in (("configured", cfg), ("without_control", baseline)):
        per_seed = []
        for seed in seeds:
            run = run_tabular(c, iterations=iterations, seed=seed, **STARTS[start])
            rel = tail_rel(run["entropy"], window)
            per_seed.append(
                {
                    "seed": seed,
                    "entropy_first": run["entropy"][0],
                    "tail_rel": rel,
                    "in_band": abs(rel) <= band,
                    "reward_first": run["reward"][0],
                    "reward_last": sum(run["reward"][-window:]) / window,
                    # None where the controller has no zeta (JSON has no NaN)
                    "zeta_last": None if math.isnan(run["zeta"][-1]) else run["zeta"][-1],
                    "eps_high_last": run["eps_high"][-1],
                }
            )
        out[name] = {"seeds_in_band": sum(s["in_band"] for s in per_seed), "runs": per_seed}
    return {
        "start": start,
        "iterations": iterations,
        "band": band,
        "window": window,
        "entropy_control": cfg.entropy_control.type,
        **out,
    }
