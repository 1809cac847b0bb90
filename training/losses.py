"""Policy losses and their aggregation (docs/algorithms.md, "Policy losses", "Safety rails").

Registries by name, verl `core_algos` style:

    POLICY_LOSSES["ppo"](batch, cfg) -> PolicyTerms   (per-token loss + clip stats)
    LOSS_AGGREGATIONS["token_mean"](per_token, mask, max_len_norm, norm=None) -> scalar

`norm` (an `AggNorm`) holds the aggregation's denominators computed once from a whole
minibatch; with it, micro-batches and data-parallel ranks that each hold some of the minibatch's
rows produce losses (and gradients) that add up to the whole minibatch's. Without it the
denominators come from `mask` itself.

`compute_policy_loss` applies the optional token modifier (Clip-Cov / KL-Cov, from the entropy
controller), truncated IS, the KL to a reference and the entropy bonus, and aggregates.
Everything is computed in float32 (float64 inputs stay float64, for gradcheck). Masked positions
(mask 0: prompt / observation / padding) never reach a sum: they are removed with `torch.where`
*before* any exp or product, so garbage there cannot leak into the loss, the metrics or the
gradients. Every log-ratio is clamped to [-20, 20] before exp (gradient 0 outside), so one stale
token cannot make the loss e^25.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
from torch import Tensor

from eprl.registry import Registry
from eprl.training.kl import LOG_RATIO_MAX, kl_estimate

if TYPE_CHECKING:  # type only: config imports this module's registries
    from eprl.training.config import LearnerConfig

GSPO_SEQ_LOG_RATIO_MAX = 10.0  # GSPO's sequence log-ratio is capped at 10 (as verl)


@dataclass
class LossInputs:
    logp: Tensor  # [B,T] current policy log p(a_t), requires grad
    old_logp: Tensor  # [B,T] behaviour policy log-prob (logp_old)
    advantages: Tensor  # [B,T] per-token advantage (broadcast, entropy-shaped)
    mask: Tensor  # [B,T] 1 = action token
    entropy: Optional[Tensor] = None  # [B,T] exact H(s_t) (differentiable if entropy_coef != 0)
    ref_logp: Optional[Tensor] = None  # [B,T] reference policy log-prob (kl_coef > 0)
    inference_logp: Optional[Tensor] = None  # [B,T] inference engine log-prob (tis_cap set)


@dataclass
class PolicyTerms:
    loss: Tensor  # [B,T] per-token policy loss, before aggregation
    ratio: Tensor  # ratios for metrics: [B,T] (token losses) or [B] (gspo: sequence ratio)
    clip_high: Tensor  # bool, like ratio: clipped branch active at the upper bound
    clip_low: Tensor  # bool, like ratio: clipped branch active at the lower bound (A < 0, r < lo)
    clip_dual: Tensor  # bool, like ratio: dual-clip bound active (A < 0, loss capped at c|A|)
    units: Tensor  # bool, like ratio: which entries count for the metrics
    no_grad: Tensor  # bool [B,T]: action tokens whose gradient the loss already zeroes (a clipped branch)


@dataclass(frozen=True)
class AggNorm:
    """Denominators of the aggregations over a whole minibatch (each clamped to >= 1)."""

    tokens: float  # action tokens (token_mean)
    seqs: float  # sequences with at least one action token (the seq_mean_* modes)

    @classmethod
    def of(cls, mask: Tensor) -> "AggNorm":
        m = mask > 0
        return cls(tokens=float(m.sum().clamp_min(1)), seqs=float((m.sum(-1) > 0).sum().clamp_min(1)))


# A loss reads its parameters from cfg; an entropy controller's loss_overrides() (ADAPO: eps_high) are already
# applied to that cfg, so a loss never needs to know which controller runs.
LossFn = Callable[[LossInputs, "LearnerConfig"], PolicyTerms]
AggFn = Callable[..., Tensor]  # (x, mask, max_len_norm, norm: Optional[AggNorm] = None) -> scalar
# (per-token policy loss, its PolicyTerms, inputs) -> (modified per-token loss, metrics): Clip-Cov / KL-Cov
TokenModifier = Callable[[Tensor, PolicyTerms, LossInputs], tuple[Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[LossFn] = Registry("policy loss", group="eprl.losses")
LOSS_AGGREGATIONS: Registry[AggFn] = Registry("loss aggregation", group="eprl.loss_aggregations")
register_loss = POLICY_LOSSES.register
register_aggregation = LOSS_AGGREGATIONS.register


def _dtype(t: Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)  # 16-bit -> float32; float64 stays


def _masked(x: Tensor, m: Tensor) -> Tensor:
    """x where m, else exactly 0 (and zero gradient), whatever x holds there."""
    return torch.where(m, x, torch.zeros_like(x))


def _log_ratio(batch: LossInputs, m: Tensor) -> Tensor:
    """log r = logp - logp_old on action tokens (0 elsewhere), clamped to [-20, 20]: gradient 0 outside."""
    dt = _dtype(batch.logp)
    return _masked(batch.logp.to(dt) - batch.old_logp.to(dt), m).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)


def _clipped_objective(
    ratio: Tensor, adv: Tensor, lo: float, hi: float, c: Optional[float] = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-min(r A, clip(r, lo, hi) A), and with dual-clip c (Ye et al. 2020), for A < 0:
    min(that, -c A) = min(max(-r A, -clip(r) A), c |A|). Returns (loss, high, low, dual): where the
    upper, lower and dual bounds are the active branch."""
    loss = -torch.minimum(ratio * adv, ratio.clamp(lo, hi) * adv)
    high, low = (ratio > hi) & (adv > 0), (ratio < lo) & (adv < 0)
    if c is None:
        return loss, high, low, torch.zeros_like(high)
    cap = -c * adv
    dual = (adv < 0) & (loss > cap)
    return torch.where(dual, cap, loss), high, low, dual


# ----------------------------------------------------------------------------- losses
@register_loss("pg")
def pg_loss(batch: LossInputs, cfg: LearnerConfig) -> PolicyTerms:
    """REINFORCE / RLOO: loss_t = -A_t * logp_t (strictly on-policy; no clipping)."""
    m = batch.mask > 0
    adv = _masked(batch.advantages.to(_dtype(batch.logp)), m)
    logp = _masked(batch.logp.to(_dtype(batch.logp)), m)
    ratio = torch.exp(_log_ratio(batch, m)).detach()
    never = torch.zeros_like(m)
    return PolicyTerms(-adv * logp, ratio, never, never, never, m, never)


def _token_clip(batch: LossInputs, cfg: LearnerConfig, lo: float, hi: float) -> PolicyTerms:
    m = batch.mask > 0
    ratio = torch.exp(_log_ratio(batch, m))
    adv = _masked(batch.advantages.to(ratio.dtype), m)
    loss, high, low, dual = _clipped_objective(ratio, adv, lo, hi, cfg.clip_ratio_c)
    high, low, dual = high & m, low & m, dual & m
    return PolicyTerms(loss, ratio.detach(), high, low, dual, m, high | low | dual)


@register_loss("ppo")
def ppo_loss(batch: LossInputs, cfg: LearnerConfig) -> PolicyTerms:
    """PPO / LOOP: loss_t = -min(r_t A_t, clip(r_t, lo, 1+eps) A_t), r_t = exp(logp_t - logp_old_t).

    lo = 1 - eps (`one_minus_eps`) or 1/(1+eps) (`inverse`, as in the LOOP code). Symmetric:
    `eps_high` (ADAPO's lever) is not read here (config refuses adapo with ppo); use `dapo`.
    Dual-clip when clip_ratio_c is set: for A < 0 the loss is at most c |A|.
    """
    lo = 1.0 - cfg.eps if cfg.ppo_lower_bound == "one_minus_eps" else 1.0 / (1.0 + cfg.eps)
    return _token_clip(batch, cfg, lo, 1.0 + cfg.eps)


@register_loss("dapo")
def dapo_loss(batch: LossInputs, cfg: LearnerConfig) -> PolicyTerms:
    """DAPO clip-higher: loss_t = -min(r_t A_t, clip(r_t, 1-eps_low, 1+eps_high) A_t) (+ dual-clip).

    cfg.eps_high is ADAPO's current value when it runs (its loss_overrides).
    """
    return _token_clip(batch, cfg, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)


@register_loss("gspo")
def gspo_loss(batch: LossInputs, cfg: LearnerConfig) -> PolicyTerms:
    """GSPO, token form:
        s_i       = exp(min(10, (1/|y_i|) sum_t (logp_t - logp_old_t)))    (sequence ratio, log capped at 10)
        s_{i,t}   = sg[s_i] * exp(logp_t - sg[logp_t])                     (value s_i, grad via logp_t)
        loss_{i,t} = -min(s_{i,t} A_{i,t}, clip(s_{i,t}, 1-gspo_eps_low, 1+gspo_eps_high) A_{i,t})
    Clip flags are sequence-level, with the sign of the sequence's mean advantage; `no_grad` marks
    the tokens of clipped sequences (for the per-token clip fractions and Clip-Cov).
    """
    m = batch.mask > 0
    dt = _dtype(batch.logp)
    n_tok = m.sum(-1)
    seq_log_ratio = (_log_ratio(batch, m).sum(-1) / n_tok.clamp_min(1)).clamp(max=GSPO_SEQ_LOG_RATIO_MAX)
    s = torch.exp(seq_log_ratio)  # [B]
    logp = batch.logp.to(dt)
    s_tok = s.detach()[:, None] * torch.exp(_masked(logp - logp.detach(), m))
    lo, hi = 1.0 - cfg.gspo_eps_low, 1.0 + cfg.gspo_eps_high
    adv = _masked(batch.advantages.to(dt), m)
    loss, _, _, _ = _clipped_objective(s_tok, adv, lo, hi)
    seq_adv = adv.sum(-1) / n_tok.clamp_min(1)
    has_tok = n_tok > 0
    high = (s > hi) & (seq_adv > 0) & has_tok
    low = (s < lo) & (seq_adv < 0) & has_tok
    return PolicyTerms(loss, s.detach(), high, low, torch.zeros_like(high), has_tok, (high | low)[:, None] & m)


@register_loss("cispo")
def cispo_loss(batch: LossInputs, cfg: LearnerConfig) -> PolicyTerms:
    """CISPO (MiniMax-M1, 2025): loss_t = -sg(clip(r_t, 1 - cispo_eps_low, 1 + cispo_eps_high)) * A_t * logp_t.

    The clipped ratio is a constant weight: every token keeps its gradient. clip_high / clip_low count
    the tokens whose weight was clipped (whatever the sign of A); no token loses its gradient.
    """
    m = batch.mask > 0
    dt = _dtype(batch.logp)
    ratio = torch.exp(_log_ratio(batch, m))
    lo, hi = 1.0 - cfg.cispo_eps_low, 1.0 + cfg.cispo_eps_high
    weight = ratio.clamp(lo, hi).detach()
    adv = _masked(batch.advantages.to(dt), m)
    never = torch.zeros_like(m)
    loss = -weight * adv * _masked(batch.logp.to(dt), m)
    return PolicyTerms(loss, ratio.detach(), (ratio > hi) & m, (ratio < lo) & m, never, m, never)


# ----------------------------------------------------------------------------- aggregation
@register_aggregation("token_mean")
def token_mean(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """sum over all action tokens of the minibatch / number of action tokens (DAPO)."""
    return _masked(x, m).sum() / (m.sum().clamp_min(1) if norm is None else norm.tokens)


def _seq_mean(per_seq: Tensor, m: Tensor, norm: Optional[AggNorm]) -> Tensor:
    """Mean over sequences with at least one action token (the others are left out: our choice)."""
    has = m.sum(-1) > 0
    return _masked(per_seq, has).sum() / (has.sum().clamp_min(1) if norm is None else norm.seqs)


@register_aggregation("seq_mean_token_mean")
def seq_mean_token_mean(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """mean over sequences of (mean over the sequence's action tokens) (GRPO, GSPO)."""
    return _seq_mean(_masked(x, m).sum(-1) / m.sum(-1).clamp_min(1), m, norm)


@register_aggregation("seq_mean_token_sum")
def seq_mean_token_sum(x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None) -> Tensor:
    """mean over sequences of (sum over the sequence's action tokens)."""
    return _seq_mean(_masked(x, m).sum(-1), m, norm)


@register_aggregation("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(
    x: Tensor, m: Tensor, max_len_norm: Optional[int], norm: Optional[AggNorm] = None
) -> Tensor:
    """Dr.GRPO: mean over sequences of (sum over action tokens / max_len_norm), a constant."""
    if max_len_norm is None or max_len_norm <= 0:
        raise ValueError("loss_agg seq_mean_token_sum_norm needs a positive max_len_norm")
    return _seq_mean(_masked(x, m).sum(-1) / float(max_len_norm), m, norm)


# ----------------------------------------------------------------------------- total loss
def compute_policy_loss(
    cfg: LearnerConfig,
    batch: LossInputs,
    *,
    overrides: Mapping[str, Any] | None = None,
    max_len_norm: int | None = None,
    norm: AggNorm | None = None,
    modifier: TokenModifier | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """loss = agg( w_t * modifier(policy_loss)_t + kl_coef * KL_t - entropy_coef * H_t ).

    overrides: learner fields the entropy controller moves (its loss_overrides(), e.g. ADAPO's eps_high),
    applied to a copy of cfg that the loss and aggregation read.
    modifier: the entropy controller's token modifier (Clip-Cov detaches chosen tokens' gradient,
    KL-Cov adds a penalty on them); identity when None.
    w_t = min(exp(clamp(logp_old_t - logp_infer_t, -20, 20)), tis_cap), detached (truncated importance
    sampling, only when cfg.tis_cap is set); it weights the policy term only, not the KL
    and entropy terms (our choice, not the paper's; as in verl).
    KL_t = the `kl_estimator` (k1 | k2 | k3 | k1+ | k3+, training/kl.py) of KL(pi || ref).
    `norm`: the whole minibatch's denominators when `batch` is one part of it (see AggNorm); the
    loss and pg_loss of the parts then add up to the minibatch's; the other metrics are this part's.
    """
    if overrides:
        cfg = cfg.model_copy(update=dict(overrides))  # never mutate the run's config
    loss_fn = POLICY_LOSSES.get(cfg.loss)
    agg_fn = LOSS_AGGREGATIONS.get(cfg.loss_agg)
    if norm is not None:
        agg_fn = functools.partial(agg_fn, norm=norm)
    max_len_norm = cfg.max_len_norm if max_len_norm is None else max_len_norm
    m = batch.mask > 0
    dt = _dtype(batch.logp)
    terms = loss_fn(batch, cfg)
    per_token = terms.loss
    metrics: dict[str, float] = {}
    if modifier is not None:
        per_token, extra = modifier(per_token, terms, batch)
        metrics.update(extra)

    if cfg.tis_cap is not None:
        if batch.inference_logp is None:
            raise ValueError("tis_cap is set but LossInputs.inference_logp is None")
        log_w = _masked(batch.old_logp.to(dt) - batch.inference_logp.to(dt), m).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)
        w = torch.exp(log_w).clamp(max=cfg.tis_cap).detach()
        per_token = per_token * w
        metrics["tis_weight_mean"] = _mean(w, m)
    metrics["pg_loss"] = agg_fn(per_token, m, max_len_norm).item()

    if cfg.kl_coef != 0.0:
        if batch.ref_logp is None:
            raise ValueError("kl_coef > 0 but LossInputs.ref_logp is None")
        zero = torch.zeros_like(batch.logp, dtype=dt)
        kl = _masked(
            kl_estimate(cfg.kl_estimator, _masked(batch.logp.to(dt), m), torch.where(m, batch.ref_logp.to(dt), zero)), m
        )
        per_token = per_token + cfg.kl_coef * kl
        metrics["kl_ref"] = _mean(kl.detach(), m)

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
            clip_frac_high=((terms.clip_high & units).sum() / n_units).item(),  # upper PPO bound (A > 0)
            clip_frac_low=((terms.clip_low & units).sum() / n_units).item(),  # lower PPO bound (A < 0)
            clip_frac_dual=((terms.clip_dual & units).sum() / n_units).item(),  # dual-clip cap (A < 0, r > c)
            approx_kl=_mean(-log_r, m),  # mean(logp_old - logp)
            kl_k3=_mean(torch.exp(log_r) - 1.0 - log_r, m),  # k3 of KL(old || new)
            ratio_mean=_mean(terms.ratio, units),
            ratio_max=(terms.ratio[units].max().item() if bool(units.any()) else 1.0),
        )
        if terms.units.dim() == 1:  # sequence-level loss (gspo): also the fraction of action tokens clipped
            tok = lambda seq: _mean(seq[:, None].expand_as(m).to(dt), m)  # noqa: E731
            metrics.update(clip_frac_high_token=tok(terms.clip_high), clip_frac_low_token=tok(terms.clip_low))
        if batch.entropy is not None:
            metrics["entropy"] = _mean(batch.entropy.detach().to(dt), m)
    return loss, metrics


def _mean(x: Tensor, m: Tensor) -> float:
    return (_masked(x, m).sum() / m.sum().clamp_min(1)).item()
