"""Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models"; docs/algorithms.md, "Covariance-based entropy control").

The entropy change of a softmax policy is driven by the covariance of log-prob and advantage
(Theorem 1). Per action token t of one forward pass (the micro-batch, or the whole minibatch when
`micro_batch_tokens` is null or its `auto` budget holds it; verl also selects per micro-batch):
    cov_t = (A_t - mean A) * (logp_t - mean logp)        (means over the pass's action tokens, logp detached)
- Clip-Cov: among tokens whose gradient the loss has not already zeroed (a clipped branch) and with
  lb < cov_t < ub, pick max(1, int(clip_cov_ratio * n_tokens)) at random and detach their loss
  (value kept, gradient 0). Random = torch.randperm on the CPU default generator: reproducible,
  and its state is in every checkpoint, so `--resume` stays bit-exact.
- KL-Cov: the max(1, int(kl_cov_ratio * n_tokens)) tokens with the largest cov_t get an extra
  kl_cov_coef * |logp_t - logp_old_t| (deterministic top-k).
Both act on any policy loss (the paper's form is Clip-Cov on ppo/dapo, KL-Cov on the unclipped -r A,
i.e. `loss: pg` at r = 1); they are registered as entropy controllers with a token modifier and take
no control step (H* is still measured and logged, and inherited by `continue`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from eprl.training.entropy_control import EntropyController
from eprl.training.losses import LossInputs, PolicyTerms


def token_covariance(adv: Tensor, logp: Tensor, m: Tensor) -> Tensor:
    """cov_t = (A_t - mean A) * (logp_t - mean logp) over action tokens m (float32; 0 elsewhere)."""
    dt = torch.promote_types(logp.dtype, torch.float32)
    zero = torch.zeros_like(logp, dtype=dt)
    a = torch.where(m, adv.detach().to(dt), zero)
    lp = torch.where(m, logp.detach().to(dt), zero)
    n = m.sum().clamp_min(1)
    return torch.where(m, (a - a.sum() / n) * (lp - lp.sum() / n), zero)


def _count(ratio: float, m: Tensor) -> int:
    return max(int(ratio * int(m.sum())), 1)


class ClipCov(EntropyController):
    """Clip-Cov: detach the gradient of a random `clip_cov_ratio` of the tokens with lb < cov < ub."""

    def token_modifier(
        self, per_token: Tensor, terms: PolicyTerms, batch: LossInputs
    ) -> tuple[Tensor, dict[str, float]]:
        m = batch.mask > 0
        cov = token_covariance(batch.advantages, batch.logp, m)
        eligible = m & ~terms.no_grad & (cov > self.ec.clip_cov_lb) & (cov < self.ec.clip_cov_ub)
        candidates = eligible.flatten().nonzero().squeeze(-1)
        chosen = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        if candidates.numel():
            pick = torch.randperm(candidates.numel())[: _count(self.ec.clip_cov_ratio, m)]
            chosen[candidates[pick.to(candidates.device)]] = True
        chosen = chosen.view_as(m)
        return torch.where(chosen, per_token.detach(), per_token), {"cov_selected_frac": _frac(chosen, m)}


class KlCov(EntropyController):
    """KL-Cov: + kl_cov_coef * |logp - logp_old| on the `kl_cov_ratio` tokens with the largest cov."""

    def token_modifier(
        self, per_token: Tensor, terms: PolicyTerms, batch: LossInputs
    ) -> tuple[Tensor, dict[str, float]]:
        m = batch.mask > 0
        chosen = torch.zeros(m.numel(), dtype=torch.bool, device=m.device)
        if bool(m.any()):
            cov = token_covariance(batch.advantages, batch.logp, m)
            cov = torch.where(m, cov, torch.full_like(cov, -torch.inf)).flatten()
            chosen[torch.topk(cov, _count(self.ec.kl_cov_ratio, m)).indices] = True
        chosen = chosen.view_as(m)
        dt = per_token.dtype
        gap = (batch.logp.to(dt) - batch.old_logp.to(dt)).abs()
        penalty = torch.where(chosen, self.ec.kl_cov_coef * gap, torch.zeros_like(gap))
        return per_token + penalty, {"cov_selected_frac": _frac(chosen, m)}


def _frac(chosen: Tensor, m: Tensor) -> float:
    return float((chosen & m).sum() / m.sum().clamp_min(1))
