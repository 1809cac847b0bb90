"""Numerics: dtypes, loss scaling, entropy and inference/learner mismatch statistics.

docs/algorithms.md, "Numerics": log-probs, ratios, advantages and entropies are float32 always;
never subtract two 16-bit log-probs (rounding a ratio near 1 to bf16 biases it upward and makes
the upper clip bound bite more often). fp16 compute needs loss scaling (GradScaler).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_grad_scaler(dtype_name: str, device: Optional[str] = None, sharded: bool = False) -> torch.amp.GradScaler:
    """A GradScaler enabled only for fp16 (bf16 and fp32 have fp32's exponent range: no scaling).

    device None: "cuda" when available, else "cpu" (torch.amp.GradScaler supports "cpu").
    sharded: FSDP's ShardedGradScaler, which agrees on inf/nan across ranks (same state_dict).
    """
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown dtype {dtype_name!r}; registered: {sorted(DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device, enabled=(dtype_name == "fp16"))
    return torch.amp.GradScaler(device, enabled=(dtype_name == "fp16"))


def _masked_mean(x: Tensor, m: Tensor) -> float:
    return (torch.where(m, x, torch.zeros_like(x)).sum() / m.sum().clamp_min(1)).item()


def _masked_max(x: Tensor, m: Tensor) -> float:
    return x[m].max().item() if bool(m.any()) else 0.0


@torch.no_grad()
def mismatch_stats(learner_logp: Tensor, inference_logp: Tensor, mask: Tensor) -> dict[str, float]:
    """Inference-vs-learner mismatch over action tokens (float32):
    mismatch_dp_mean / mismatch_dp_max: mean / max |exp(logp_infer) - exp(logp_learner)|
    mismatch_iw_max:                    max exp(logp_learner - logp_infer)
    mismatch_logp_abs_mean:             mean |logp_infer - logp_learner| (run.overlap: the staleness)
    """
    m = mask > 0
    zero = torch.zeros_like(learner_logp, dtype=torch.float32)
    lp = torch.where(m, learner_logp.float(), zero)
    ip = torch.where(m, inference_logp.float(), zero)
    dp = (ip.exp() - lp.exp()).abs()
    iw = (lp - ip).exp()
    return {
        "mismatch_dp_mean": _masked_mean(dp, m),
        "mismatch_dp_max": _masked_max(dp, m),
        "mismatch_iw_max": _masked_max(iw, m),
        "mismatch_logp_abs_mean": _masked_mean((lp - ip).abs(), m),
    }


@torch.no_grad()
def entropy_stats(entropy: Optional[Tensor], logp: Tensor, mask: Tensor) -> dict[str, float]:
    """entropy: exact mean H(s) over action tokens (omitted when entropy is None);
    entropy_sampled: mean(-logp) over action tokens, the sampled-token estimate."""
    m = mask > 0
    out = {"entropy_sampled": _masked_mean(-logp.float(), m)}
    if entropy is not None:
        out["entropy"] = _masked_mean(entropy.float(), m)
    return out
