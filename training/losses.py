"""Policy losses and their aggregation (docs/algorithms.md, "Policy losses").

Registries by name, verl `core_algos` style:

    POLICY_LOSSES["ppo"](batch, cfg, eps_high) -> PolicyTerms   (per-token loss + clip stats)
    LOSS_AGGREGATIONS["token_mean"](per_token, mask, max_len_norm, norm=None) -> scalar

`norm` (an `AggNorm`) holds the aggregation's denominators computed once from a whole
minibatch; with it, micro-batches and data-parallel ranks that each hold some of the minibatch's
rows produce losses (and gradients) that add up to the whole minibatch's. Without it the
denominators come from `mask` itself.

`compute_policy_loss` adds the optional terms (truncated IS, k3 KL, entropy bonus) and
aggregates. Everything is computed in float32 (float64 inputs stay float64, for gradcheck).
Masked positions (mask 0: prompt / observation / padding) never reach a sum: they are
removed with `torch.where` *before* any exp or product, so garbage there cannot leak into
the loss, the metrics or the gradients.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from training.config import LearnerConfig


@dataclass
class LossInputs:
    logp: Tensor                          # [B,T] current policy log p(a_t), requires grad
    old_logp: Tensor                      # [B,T] behaviour policy log-prob (logp_old)
    advantages: Tensor                    # [B,T] per-token advantage (broadcast, entropy-shaped)
    mask: Tensor                          # [B,T] 1 = action token
    entropy: Optional[Tensor] = None      # [B,T] exact H(s_t) (differentiable if entropy_coef != 0)
    ref_logp: Optional[Tensor] = None     # [B,T] reference policy log-prob (kl_coef > 0)
    inference_logp: Optional[Tensor] = None  # [B,T] inference engine log-prob (tis_cap set)


@dataclass
class PolicyTerms:
    loss: Tensor       # [B,T] per-token policy loss, before aggregation
    ratio: Tensor      # ratios for metrics: [B,T] (token losses) or [B] (gspo: sequence ratio)
    clip_high: Tensor  # bool, like ratio: clipped branch active at the upper bound
    clip_low: Tensor   # bool, like ratio: clipped branch active at the lower bound
    units: Tensor      # bool, like ratio: which entries count for the metrics


@dataclass(frozen=True)
class AggNorm:
    """Denominators of the aggregations over a whole minibatch (each clamped to >= 1)."""
    tokens: float  # action tokens (token_mean)
    seqs: float    # sequences with at least one action token (seq_mean_token_mean, seq_mean_token_sum_norm)

    @classmethod
    def of(cls, mask: Tensor) -> "AggNorm":
        m = mask > 0
        return cls(tokens=float(m.sum().clamp_min(1)), seqs=float((m.sum(-1) > 0).sum().clamp_min(1)))


LossFn = Callable[[LossInputs, LearnerConfig, float], PolicyTerms]
AggFn = Callable[..., Tensor]  # (x, mask, max_len_norm, norm: Optional[AggNorm] = None) -> scalar
POLICY_LOSSES: dict[str, LossFn] = {}
LOSS_AGGREGATIONS: dict[str, AggFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        POLICY_LOSSES[name] = fn
        return fn
    return deco


def register_aggregation(name: str) -> Callable[[AggFn], AggFn]:
    def deco(fn: AggFn) -> AggFn:
        LOSS_AGGREGATIONS[name] = fn
        return fn
    return deco


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; registered: {sorted(registry)}")
    return registry[name]


def _dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # 16-bit -> float32; float64 stays


def _masked(x: Tensor, m: Tensor) -> Tensor:
    """x where m, else exactly 0 (and zero gradient), whatever x holds there."""
    return torch.where(m, x, torch.zeros_like(x))


def _log_ratio(batch: LossInputs, m: Tensor) -> Tensor:
    dt = _dtype(batch.logp)
    return _masked(batch.logp.to(dt) - batch.old_logp.to(dt), m)


def _clipped_objective(ratio: Tensor, adv: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor, Tensor]:
    """-min(r A, clip(r, lo, hi) A); and where the clipped branch is the active one."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(lo, hi) * adv)
    return loss, (ratio > hi) & (adv > 0), (ratio < lo) & (adv < 0)


# ----------------------------------------------------------------------------- losses
@register_loss("pg")
def pg_loss(batch: LossInputs, cfg: LearnerConfig, eps_high: float) -> PolicyTerms:
    """REINFORCE / RLOO: loss_t = -A_t * logp_t (strictly on-policy; no clipping)."""
    m = batch.mask > 0
    adv = _masked(batch.advantages.to(_dtype(batch.logp)), m)
    logp = _masked(batch.logp.to(_dtype(batch.logp)), m)
    ratio = torch.exp(_log_ratio(batch, m)).detach()
    never = torch.zeros_like(m)
    return PolicyTerms(-adv * logp, ratio, never, never, m)


@register_loss("ppo")
def ppo_loss(batch: LossInputs, cfg: LearnerConfig, eps_high: float) -> PolicyTerms:
    """PPO / LOOP: loss_t = -min(r_t A_t, clip(r_t, lo, 1+eps) A_t), r_t = exp(logp_t - logp_old_t).

    lo = 1 - eps (`one_minus_eps`) or 1/(1+eps) (`inverse`, as in the LOOP code). Symmetric:
    `eps_high` (ADAPO) is not used here; use `dapo` for asymmetric bounds.
    """
    m = batch.mask > 0
    ratio = torch.exp(_log_ratio(batch, m))
    lo = 1.0 - cfg.eps if cfg.ppo_lower_bound == "one_minus_eps" else 1.0 / (1.0 + cfg.eps)
    adv = _masked(batch.advantages.to(ratio.dtype), m)
    loss, high, low = _clipped_objective(ratio, adv, lo, 1.0 + cfg.eps)
    return PolicyTerms(loss, ratio.detach(), high & m, low & m, m)


@register_loss("dapo")
def dapo_loss(batch: LossInputs, cfg: LearnerConfig, eps_high: float) -> PolicyTerms:
    """DAPO clip-higher: loss_t = -min(r_t A_t, clip(r_t, 1-eps_low, 1+eps_high) A_t).

    eps_high is cfg.eps_high unless the caller (ADAPO) passes its current value.
    """
    m = batch.mask > 0
    ratio = torch.exp(_log_ratio(batch, m))
    adv = _masked(batch.advantages.to(ratio.dtype), m)
    loss, high, low = _clipped_objective(ratio, adv, 1.0 - cfg.eps_low, 1.0 + eps_high)
    return PolicyTerms(loss, ratio.detach(), high & m, low & m, m)


@register_loss("gspo")
def gspo_loss(batch: LossInputs, cfg: LearnerConfig, eps_high: float) -> PolicyTerms:
    """GSPO, token form:
        s_i       = exp( (1/|y_i|) sum_t (logp_t - logp_old_t) )          (sequence ratio)
        s_{i,t}   = sg[s_i] * exp(logp_t - sg[logp_t])                     (value s_i, grad via logp_t)
        loss_{i,t} = -min(s_{i,t} A_{i,t}, clip(s_{i,t}, 1-gspo_eps_low, 1+gspo_eps_high) A_{i,t})
    Clip fractions are sequence-level, with the sign of the sequence's mean advantage.
    """
    m = batch.mask > 0
    dt = _dtype(batch.logp)
    n_tok = m.sum(-1)
    seq_log_ratio = _log_ratio(batch, m).sum(-1) / n_tok.clamp_min(1)
    s = torch.exp(seq_log_ratio)                                        # [B]
    logp = batch.logp.to(dt)
    s_tok = s.detach()[:, None] * torch.exp(_masked(logp - logp.detach(), m))
    lo, hi = 1.0 - cfg.gspo_eps_low, 1.0 + cfg.gspo_eps_high
    adv = _masked(batch.advantages.to(dt), m)
    loss, _, _ = _clipped_objective(s_tok, adv, lo, hi)
    seq_adv = adv.sum(-1) / n_tok.clamp_min(1)
    has_tok = n_tok > 0
    high = (s > hi) & (seq_adv > 0) & has_tok
    low = (s < lo) & (seq_adv < 0) & has_tok
    return PolicyTerms(loss, s.detach(), high, low, has_tok)


# ----------------------------------------------------------------------------- aggregation
@register_aggregation("token_mean")
def token_mean(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """sum over all action tokens of the minibatch / number of action tokens (DAPO)."""
    return _masked(x, m).sum() / (m.sum().clamp_min(1) if norm is None else norm.tokens)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """mean over sequences of (mean over the sequence's action tokens) (GRPO).

    Sequences without action tokens are left out of the mean (our choice, not the paper's).
    """
    n_tok = m.sum(-1)
    per_seq = _masked(x, m).sum(-1) / n_tok.clamp_min(1)
    has = n_tok > 0
    return _masked(per_seq, has).sum() / (has.sum().clamp_min(1) if norm is None else norm.seqs)


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """Dr.GRPO: mean over sequences of (sum over action tokens / max_len_norm), a constant.

    Sequences without action tokens are left out of the mean (our choice, not the paper's).
    """
    if max_len_norm is None or max_len_norm <= 0:
        raise ValueError("loss_agg seq_mean_token_sum_norm needs a positive max_len_norm")
    has = m.sum(-1) > 0
    per_seq = _masked(x, m).sum(-1) / float(max_len_norm)
    return per_seq.sum() / (has.sum().clamp_min(1) if norm is None else norm.seqs)


# ----------------------------------------------------------------------------- total loss
def compute_policy_loss(cfg: LearnerConfig, batch: LossInputs, *, eps_high: float | None = None,
                        max_len_norm: int | None = None, norm: AggNorm | None = None) -> tuple[Tensor, dict[str, float]]:
    """loss = agg( w_t * policy_loss_t + kl_coef * k3_t - entropy_coef * H_t ).

    w_t = min(exp(logp_old_t - logp_infer_t), tis_cap), detached (truncated importance
    sampling, only when cfg.tis_cap is set); it weights the policy term only, not the KL
    and entropy terms (our choice, not the paper's; as in verl).
    k3_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1  (Schulman's k3 estimator of KL(pi||ref)).
    `norm`: the whole minibatch's denominators when `batch` is one part of it (see AggNorm); the
    loss and pg_loss of the parts then add up to the minibatch's; the other metrics are this part's.
    """
    loss_fn = _lookup(POLICY_LOSSES, cfg.loss, "policy loss")
    agg_fn = _lookup(LOSS_AGGREGATIONS, cfg.loss_agg, "loss aggregation")
    if norm is not None:
        agg_fn = functools.partial(agg_fn, norm=norm)
    max_len_norm = cfg.max_len_norm if max_len_norm is None else max_len_norm
    m = batch.mask > 0
    dt = _dtype(batch.logp)
    terms = loss_fn(batch, cfg, cfg.eps_high if eps_high is None else eps_high)
    per_token = terms.loss
    metrics: dict[str, float] = {}

    if cfg.tis_cap is not None:
        if batch.inference_logp is None:
            raise ValueError("tis_cap is set but LossInputs.inference_logp is None")
        log_w = _masked(batch.old_logp.to(dt) - batch.inference_logp.to(dt), m)
        w = torch.exp(log_w).clamp(max=cfg.tis_cap).detach()
        per_token = per_token * w
        metrics["tis_weight_mean"] = _mean(w, m)
    metrics["pg_loss"] = agg_fn(per_token, m, max_len_norm).item()

    if cfg.kl_coef != 0.0:
        if batch.ref_logp is None:
            raise ValueError("kl_coef > 0 but LossInputs.ref_logp is None")
        d = _masked(batch.ref_logp.to(dt) - batch.logp.to(dt), m)
        k3 = torch.exp(d) - d - 1.0
        per_token = per_token + cfg.kl_coef * k3
        metrics["kl_ref"] = _mean(k3.detach(), m)

    if cfg.entropy_coef != 0.0:
        if batch.entropy is None:
            raise ValueError("entropy_coef != 0 but LossInputs.entropy is None")
        per_token = per_token - cfg.entropy_coef * _masked(batch.entropy.to(dt), m)

    loss = agg_fn(per_token, m, max_len_norm)

    with torch.no_grad():
        units = terms.units
        n_units = units.sum().clamp_min(1)
        log_r = _log_ratio(batch, m)
        metrics.update(
            loss=loss.item(),
            clip_frac_high=((terms.clip_high & units).sum() / n_units).item(),
            clip_frac_low=((terms.clip_low & units).sum() / n_units).item(),
            approx_kl=_mean(-log_r, m),                          # mean(logp_old - logp)
            kl_k3=_mean(torch.exp(log_r) - 1.0 - log_r, m),       # k3 of KL(old || new)
            ratio_mean=_mean(terms.ratio, units),
            ratio_max=(terms.ratio[units].max().item() if bool(units.any()) else 1.0),
        )
        if batch.entropy is not None:
            metrics["entropy"] = _mean(batch.entropy.detach().to(dt), m)
    return loss, metrics


def _mean(x: Tensor, m: Tensor) -> float:
    return (_masked(x, m).sum() / m.sum().clamp_min(1)).item()
