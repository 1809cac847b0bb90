import math

import pytest
import torch

from eprl.training.config import LearnerConfig
from eprl.training.losses import LossInputs, compute_policy_loss
from eprl.training.numerics import DTYPES, entropy_stats, make_grad_scaler, mismatch_stats

torch.set_num_threads(1)


def test_mismatch_stats_by_hand():
    learner = torch.tensor([[-0.1, -2.0, -1.0, 30.0]])
    infer = torch.tensor([[-0.2, -1.5, -1.0, -70.0]])  # last token masked: garbage
    mask = torch.tensor([[1, 1, 1, 0]])
    dp = [abs(math.exp(-0.2) - math.exp(-0.1)), abs(math.exp(-1.5) - math.exp(-2.0)), 0.0]
    out = mismatch_stats(learner, infer, mask)
    assert out["mismatch_dp_mean"] == pytest.approx(sum(dp) / 3, rel=1e-5)
    assert out["mismatch_dp_max"] == pytest.approx(max(dp), rel=1e-5)
    assert out["mismatch_iw_max"] == pytest.approx(math.exp(0.1), rel=1e-5)
    assert out["mismatch_logp_abs_mean"] == pytest.approx((0.1 + 0.5 + 0.0) / 3, rel=1e-5)


def test_entropy_stats_by_hand():
    ent = torch.tensor([[1.0, 2.0, 99.0]])
    logp = torch.tensor([[-0.5, -1.5, -99.0]])
    mask = torch.tensor([[1, 1, 0]])
    assert entropy_stats(ent, logp, mask) == pytest.approx({"entropy": 1.5, "entropy_sampled": 1.0})
    assert entropy_stats(None, logp, mask) == pytest.approx({"entropy_sampled": 1.0})


def test_dtypes_and_grad_scaler():
    assert DTYPES == {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    assert make_grad_scaler("fp16", device="cpu").is_enabled()
    assert not make_grad_scaler("bf16", device="cpu").is_enabled()
    assert not make_grad_scaler("fp32").is_enabled()
    with pytest.raises(ValueError, match="bf16"):
        make_grad_scaler("fp8")


# ----------------------------------------------------------------------------- bf16 ratio rounding
N = 2_000_000


def _logps():
    g = torch.Generator().manual_seed(0)
    old = -(torch.rand(N, generator=g) * 4 + 0.5)  # logp_old in [-4.5, -0.5]
    logp = old + 0.1 * torch.randn(N, generator=g)  # small policy change
    return logp, old


def _clip_high(logp, old, eps_high=0.28):
    b = LossInputs(logp=logp[None], old_logp=old[None], advantages=torch.ones(1, N), mask=torch.ones(1, N))
    return compute_policy_loss(LearnerConfig(loss="dapo", eps_high=eps_high), b)[1]["clip_frac_high"]


def test_bf16_logps_bias_ratio_upward_and_clip_more():
    """Subtracting two bf16-rounded log-probs adds zero-mean noise e to log r, so by Jensen
    E[exp(log r + e)] > E[r]; the noise also pushes more tokens over 1 + eps_high than back."""
    logp, old = _logps()
    r32 = torch.exp(logp - old)
    lp16, old16 = logp.bfloat16().float(), old.bfloat16().float()
    r16 = torch.exp(lp16 - old16)
    diff = (r16 - r32).double()
    assert diff.mean() > 4 * diff.std() / math.sqrt(N)  # upward bias, > 4 standard errors (~6 here)
    f32, f16 = _clip_high(logp, old), _clip_high(lp16, old16)
    up = int(((r16 > 1.28) & ~(r32 > 1.28)).sum())
    down = int(((r32 > 1.28) & ~(r16 > 1.28)).sum())
    assert f16 > f32 and (f16 - f32) * N == pytest.approx(up - down, abs=2)
    assert up - down > 10 * math.sqrt(up + down)  # far beyond a fair coin's +-1 sd


def test_bf16_rounded_ratio_clips_more_at_upper_bound():
    """Rounding the ratio itself: 1.28 is not a bf16 value; ratios in (1.2773, 1.28) round up to
    1.28125 and become clipped, nothing crosses back. (Its mean moves slightly *down*, because the
    bf16 grid is twice as coarse just above 1 as just below: not an upward bias on average.)"""
    logp, old = _logps()
    r32 = torch.exp(logp - old)
    r16 = r32.bfloat16().float()
    hi = 1.28
    up = int(((r16 > hi) & ~(r32 > hi)).sum())
    down = int(((r32 > hi) & ~(r16 > hi)).sum())
    assert up > 100 and down == 0
    assert float(torch.tensor(hi).bfloat16()) == 1.28125
    # the float32 ratios through the loss: the same count as float32 data -> unchanged metric
    assert _clip_high(logp, old) == pytest.approx(float((r32 > hi).double().mean()), abs=1e-9)
