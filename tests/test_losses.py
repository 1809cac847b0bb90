import math

import pytest
import torch

from eprl.training.config import LearnerConfig
from eprl.training.losses import LOSS_AGGREGATIONS, POLICY_LOSSES, LossInputs, compute_policy_loss

torch.set_num_threads(1)


def _batch(ratios, advs, mask, old=None, dtype=torch.float32, **extra):
    """logp = old + log(ratio): each token's ratio is exactly the value written in the test."""
    old = torch.tensor(
        old if old is not None else [[-1.0 - 0.1 * j for j in range(len(r))] for r in ratios], dtype=dtype
    )
    logp = (old + torch.tensor(ratios, dtype=dtype).log()).requires_grad_(True)
    return LossInputs(
        logp=logp,
        old_logp=old,
        advantages=torch.tensor(advs, dtype=dtype),
        mask=torch.tensor(mask, dtype=dtype),
        **extra,
    )


def _ref_clip_token(r, a, lo, hi):
    """plain-Python PPO token objective: (loss, d loss / d logp, clipped-high, clipped-low)."""
    unclipped, clipped = r * a, min(max(r, lo), hi) * a
    if unclipped <= clipped:
        return -unclipped, -a * r, False, False
    return -clipped, 0.0, r > hi, r < lo


# ratio inside; above 1+eps with A>0 (clipped) and A<0 (not); below 1-eps with A<0 (clipped), A>0 (not)
RATIOS = [[1.0, 1.5, 1.5, 0.5, 0.5, 0.78]]
ADVS = [[0.7, 2.0, -2.0, -1.0, 1.0, -3.0]]
MASK = [[1, 1, 1, 1, 1, 1]]


@pytest.mark.parametrize("lower,eps,lo", [("one_minus_eps", 0.25, 0.75), ("inverse", 0.25, 0.8)])
def test_ppo_regions_both_lower_bounds(lower, eps, lo):
    cfg = LearnerConfig(loss="ppo", eps=eps, ppo_lower_bound=lower)
    b = _batch(RATIOS, ADVS, MASK)
    loss, met = compute_policy_loss(cfg, b)
    loss.backward()
    ref = [_ref_clip_token(r, a, lo, 1 + eps) for r, a in zip(RATIOS[0], ADVS[0])]
    n = len(ref)
    assert loss.item() == pytest.approx(sum(x[0] for x in ref) / n, rel=1e-6)
    assert b.logp.grad[0].tolist() == pytest.approx([x[1] / n for x in ref], rel=1e-5, abs=1e-7)
    # by hand: high clip only at token 1; low clip at token 3 always, token 5 (r=.78,A<0) only if lo=.8
    assert met["clip_frac_high"] == pytest.approx(1 / 6)
    assert met["clip_frac_low"] == pytest.approx((2 if lo == 0.8 else 1) / 6)
    # hand value for token 1 (clipped at 1.25): loss = -1.25 * 2
    assert ref[1][0] == -2.5 and ref[5][0] == pytest.approx(0.8 * 3 if lo == 0.8 else 0.78 * 3)


def test_dapo_asymmetric_and_eps_high_override():
    ratios, advs, mask = [[1.25, 1.35, 0.85, 0.75]], [[1.0, 1.0, -1.0, -1.0]], [[1, 1, 1, 1]]
    cfg = LearnerConfig(loss="dapo", eps_low=0.2, eps_high=0.28)
    loss, met = compute_policy_loss(cfg, _batch(ratios, advs, mask))
    # 1.25 inside [0.8, 1.28]; 1.35 clipped to 1.28; 0.85 inside; 0.75 clipped to 0.8
    assert loss.item() == pytest.approx((-1.25 - 1.28 + 0.85 + 0.8) / 4, rel=1e-6)
    assert (met["clip_frac_high"], met["clip_frac_low"]) == (0.25, 0.25)
    loss, met = compute_policy_loss(cfg, _batch(ratios, advs, mask), overrides={"eps_high": 0.1})
    assert loss.item() == pytest.approx((-1.1 - 1.1 + 0.85 + 0.8) / 4, rel=1e-6)
    assert met["clip_frac_high"] == 0.5


def test_pg_loss_and_aggregations():
    logp = [[-0.5, -2.0, -9.0], [-1.0, -7.0, -7.0], [-3.0, -3.0, -3.0]]
    adv = [[1.0, 1.0, 5.0], [-2.0, 4.0, 4.0], [9.0, 9.0, 9.0]]
    mask = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]  # third row: no action tokens at all
    x00, x01, x10 = 0.5, 2.0, -2.0  # -A * logp
    expected = {
        "token_mean": (x00 + x01 + x10) / 3,
        "seq_mean_token_mean": ((x00 + x01) / 2 + x10) / 2,
        "seq_mean_token_sum": ((x00 + x01) + x10) / 2,
        "seq_mean_token_sum_norm": ((x00 + x01) / 4 + x10 / 4) / 2,
    }
    assert set(expected) == set(LOSS_AGGREGATIONS)
    for agg, value in expected.items():
        b = LossInputs(
            logp=torch.tensor(logp, requires_grad=True),
            old_logp=torch.tensor(logp),
            advantages=torch.tensor(adv),
            mask=torch.tensor(mask, dtype=torch.float32),
        )
        loss, met = compute_policy_loss(LearnerConfig(loss="pg", loss_agg=agg), b, max_len_norm=4)
        assert loss.item() == pytest.approx(value, rel=1e-6), agg
        assert met["ratio_mean"] == 1.0 and met["clip_frac_high"] == 0.0


def test_sum_norm_needs_max_len():
    b = _batch([[1.0]], [[1.0]], [[1]])
    with pytest.raises(ValueError, match="max_len_norm"):
        compute_policy_loss(LearnerConfig(loss_agg="seq_mean_token_sum_norm"), b)
    loss, _ = compute_policy_loss(LearnerConfig(loss="pg", loss_agg="seq_mean_token_sum_norm", max_len_norm=8), b)
    assert loss.item() == pytest.approx(-1.0 * -1.0 / 8)


def _gspo_reference(logp, old, adv, mask, lo, hi):
    """GSPO at sequence level, differentiable through s directly: -mean_i min(s_i A_i, clip(s_i) A_i)."""
    total = 0.0
    for i in range(logp.shape[0]):
        m = mask[i] > 0
        s = torch.exp((logp[i][m] - old[i][m]).mean())
        a = adv[i][m][0]
        total = total - torch.minimum(s * a, s.clamp(lo, hi) * a)
    return total / logp.shape[0]


def test_gspo_sequence_clipping_and_gradient():
    # per-token log-ratios chosen so the mean is exactly what each comment says
    lr = [[1e-3, -2e-4, 5e-4, 0.0], [1e-4, -1e-4, 2e-4, 0.0], [-1e-3, 2e-4, 0.0, 0.0], [5e-4, 7e-4, 0.0, 0.0]]
    adv = [[1.5] * 4, [-0.5] * 4, [-2.0] * 4, [-1.0] * 4]
    mask = [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    # means: 4.333e-4 (> 4e-4 with A>0: high clip), 6.7e-5 inside, -4e-4 (< -3e-4 with A<0: low clip),
    # 6e-4 (> hi but A<0: unclipped)
    old = torch.full((4, 4), -2.0, dtype=torch.float64)
    logp = (old + torch.tensor(lr, dtype=torch.float64)).requires_grad_(True)
    b = LossInputs(
        logp=logp,
        old_logp=old,
        advantages=torch.tensor(adv, dtype=torch.float64),
        mask=torch.tensor(mask, dtype=torch.float64),
    )
    cfg = LearnerConfig(loss="gspo", loss_agg="seq_mean_token_mean")
    loss, met = compute_policy_loss(cfg, b)
    loss.backward()
    s = [math.exp(sum(r[:n]) / n) for r, n in zip(lr, [3, 3, 2, 2])]
    hand = [-min(s[0] * 1.5, 1.0004 * 1.5), -(s[1] * -0.5), -min(s[2] * -2, 0.9997 * -2), -(s[3] * -1.0)]
    assert loss.item() == pytest.approx(sum(hand) / 4, rel=1e-12)
    assert (met["clip_frac_high"], met["clip_frac_low"]) == (0.25, 0.25)
    assert met["ratio_max"] == pytest.approx(s[3], rel=1e-12)
    ref_logp = logp.detach().clone().requires_grad_(True)
    ref = _gspo_reference(ref_logp, old, b.advantages, b.mask, 1 - 3e-4, 1 + 4e-4)
    ref.backward()
    assert ref.item() == pytest.approx(loss.item(), rel=1e-12)
    assert torch.allclose(logp.grad, ref_logp.grad, atol=1e-12)
    assert logp.grad[0].abs().sum() == 0 and logp.grad[1, :3].abs().min() > 0


def test_kl_entropy_and_tis_terms():
    ratios, advs, mask = [[1.0, 1.1, 0.7, 2.0]], [[1.0, -1.0, 2.0, 0.5]], [[1, 1, 1, 0]]
    old = [[-1.0, -2.0, -0.5, -3.0]]
    ref_logp = torch.tensor([[-1.5, -1.0, -0.4, 0.0]])
    ent = torch.tensor([[2.0, 1.0, 0.5, 100.0]], requires_grad=True)
    inf = torch.tensor([[-1.2, -2.0, -0.1, 0.0]])
    cfg = LearnerConfig(loss="ppo", eps=0.2, kl_coef=0.1, entropy_coef=0.01, tis_cap=1.1)
    b = _batch(ratios, advs, mask, old=old, ref_logp=ref_logp, entropy=ent, inference_logp=inf)
    loss, met = compute_policy_loss(cfg, b)
    loss.backward()
    expected, grad = 0.0, []
    for j in range(3):
        r, a, lp = ratios[0][j], advs[0][j], old[0][j] + math.log(ratios[0][j])
        pol, dpol, _, _ = _ref_clip_token(r, a, 0.8, 1.2)
        w = min(math.exp(old[0][j] - inf[0, j].item()), 1.1)
        d = ref_logp[0, j].item() - lp
        expected += w * pol + 0.1 * (math.exp(d) - d - 1) - 0.01 * ent[0, j].item()
        grad.append((w * dpol + 0.1 * (1 - math.exp(d))) / 3)
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)
    assert b.logp.grad[0, :3].tolist() == pytest.approx(grad, rel=1e-4)
    assert ent.grad[0].tolist() == pytest.approx([-0.01 / 3] * 3 + [0.0])
    assert met["entropy"] == pytest.approx(3.5 / 3)
    assert met["tis_weight_mean"] == pytest.approx((math.exp(0.2) ** 0 * 1.1 + 1.0 + math.exp(-0.4)) / 3, rel=1e-5)


def test_metrics_by_hand():
    ratios, advs, mask = [[1.0, 2.0, 0.5]], [[1.0, 1.0, 1.0]], [[1, 1, 1]]
    _, met = compute_policy_loss(LearnerConfig(loss="ppo"), _batch(ratios, advs, mask))
    lr = [0.0, math.log(2), math.log(0.5)]
    assert met["approx_kl"] == pytest.approx(-sum(lr) / 3, abs=1e-7)
    assert met["kl_k3"] == pytest.approx(sum(math.exp(x) - 1 - x for x in lr) / 3, rel=1e-6)
    assert met["ratio_mean"] == pytest.approx(3.5 / 3) and met["ratio_max"] == pytest.approx(2.0)


VALID = [(l, a) for l in sorted(POLICY_LOSSES) for a in sorted(LOSS_AGGREGATIONS) if (l, a) != ("gspo", "token_mean")]


@pytest.mark.parametrize("loss_name,agg", VALID)
def test_masked_positions_never_contribute(loss_name, agg):
    torch.manual_seed(0)
    B, T = 3, 6
    mask = (torch.rand(B, T) > 0.4).float()
    mask[0, 0] = 1
    old = -torch.rand(B, T) * 3
    logp = old + 0.1 * torch.randn(B, T)
    adv, ent, ref, inf = torch.randn(B, T), torch.rand(B, T), -torch.rand(B, T), old + 0.05 * torch.randn(B, T)
    cfg = LearnerConfig(
        loss=loss_name,
        loss_agg=agg,
        kl_coef=0.05,
        entropy_coef=0.01,
        tis_cap=2.0,
        gspo_eps_low=0.05,
        gspo_eps_high=0.05,
    )
    junk = lambda x: torch.where(mask > 0, x, torch.empty_like(x).uniform_(-80, 80))  # finite garbage
    results = []
    for f in (lambda x: x, junk):
        lp = f(logp).detach().clone().requires_grad_(True)
        e = f(ent).detach().clone().requires_grad_(True)
        b = LossInputs(lp, f(old), f(adv), mask, entropy=e, ref_logp=f(ref), inference_logp=f(inf))
        loss, met = compute_policy_loss(cfg, b, max_len_norm=T)
        loss.backward()
        results.append((loss, met, lp.grad, e.grad))
    (l0, m0, g0, e0), (l1, m1, g1, e1) = results
    assert torch.isfinite(l1) and l1.item() == pytest.approx(l0.item(), rel=1e-6, abs=1e-7)
    assert m1 == pytest.approx(m0, rel=1e-5, abs=1e-7)
    assert torch.all(g1[mask == 0] == 0) and torch.all(e1[mask == 0] == 0)
    assert torch.allclose(g0, g1, atol=1e-7) and torch.allclose(e0, e1, atol=1e-7)


@pytest.mark.parametrize("loss_name", sorted(set(POLICY_LOSSES) - {"gspo", "cispo"}))  # both use stop-gradients
@pytest.mark.parametrize("agg", sorted(LOSS_AGGREGATIONS))
def test_gradcheck(loss_name, agg):
    torch.manual_seed(1)
    B, T = 2, 4
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.float64)
    old = -torch.rand(B, T, dtype=torch.float64) * 2
    logp0 = old + 0.3 * torch.randn(B, T, dtype=torch.float64)
    adv, ref = torch.randn(B, T, dtype=torch.float64), -torch.rand(B, T, dtype=torch.float64)
    cfg = LearnerConfig(loss=loss_name, loss_agg=agg, kl_coef=0.1, entropy_coef=0.05)

    def f(lp, ent):
        return compute_policy_loss(cfg, LossInputs(lp, old, adv, mask, entropy=ent, ref_logp=ref), max_len_norm=T)[0]

    assert torch.autograd.gradcheck(
        f, (logp0.requires_grad_(True), torch.rand(B, T, dtype=torch.float64, requires_grad=True))
    )


def test_gspo_gradient_is_finite_difference_of_sequence_objective():
    # GSPO-token's value is s but its gradient deliberately is not d(value)/d(logp) (stop-gradients),
    # so gradcheck does not apply; compare with central differences of the sequence-level objective.
    torch.manual_seed(2)
    B, T = 3, 5
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float64)
    old = -torch.rand(B, T, dtype=torch.float64) * 2
    logp0 = old + 0.03 * torch.randn(B, T, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.7, 0.4], dtype=torch.float64)[:, None].expand(B, T).clone()
    lo, hi = 0.95, 1.05
    cfg = LearnerConfig(loss="gspo", loss_agg="seq_mean_token_mean", gspo_eps_low=1 - lo, gspo_eps_high=hi - 1)
    lp = logp0.clone().requires_grad_(True)
    compute_policy_loss(cfg, LossInputs(lp, old, adv, mask))[0].backward()
    num = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        for t in range(T):
            d = torch.zeros(B, T, dtype=torch.float64)
            d[i, t] = 1e-6
            num[i, t] = (
                _gspo_reference(logp0 + d, old, adv, mask, lo, hi) - _gspo_reference(logp0 - d, old, adv, mask, lo, hi)
            ) / 2e-6
    assert torch.allclose(lp.grad, num, atol=1e-8)
    assert num.abs().sum() > 0.1  # not a vacuous comparison


def test_unknown_names_raise():
    b = _batch([[1.0]], [[1.0]], [[1]])
    with pytest.raises(ValueError, match="dapo"):
        compute_policy_loss(LearnerConfig(loss="trpo"), b)
    cfg = LearnerConfig()
    object.__setattr__(cfg, "loss_agg", "median")  # bypass pydantic's Literal to reach the registry
    with pytest.raises(ValueError, match="token_mean"):
        compute_policy_loss(cfg, b)


def test_float32_outputs_from_bf16_inputs():
    b = _batch([[1.0, 1.1]], [[1.0, 1.0]], [[1, 1]])
    b = LossInputs(
        b.logp.detach().bfloat16().requires_grad_(True), b.old_logp.bfloat16(), b.advantages.bfloat16(), b.mask
    )
    loss, _ = compute_policy_loss(LearnerConfig(), b)
    assert loss.dtype == torch.float32


# ----------------------------------------------------------------------------- safety rails (issue #10)
def _one_token(log_r, adv, **cfg):
    old = torch.tensor([[-30.0]])
    logp = (old + log_r).requires_grad_(True)
    b = LossInputs(logp=logp, old_logp=old, advantages=torch.tensor([[adv]]), mask=torch.ones(1, 1))
    loss, met = compute_policy_loss(LearnerConfig(**cfg), b)
    loss.backward()
    return loss.item(), logp.grad.item(), met


@pytest.mark.parametrize("loss", ["ppo", "dapo"])
def test_log_ratio_25_with_negative_advantage_is_clamped(loss):
    # before: loss and gradient e^25 = 7.2e10; now log r is clamped at 20 (gradient 0 outside)
    value, grad, met = _one_token(25.0, -1.0, loss=loss)
    assert value == pytest.approx(math.exp(20.0), rel=1e-5) and grad == 0.0
    assert met["ratio_max"] == pytest.approx(math.exp(20.0), rel=1e-5) and met["clip_frac_dual"] == 0.0
    # inside the bound nothing changes: log r = 2, A = -1 -> loss e^2, gradient e^2
    value, grad, _ = _one_token(2.0, -1.0, loss=loss)
    assert value == pytest.approx(math.exp(2.0), rel=1e-6) and grad == pytest.approx(math.exp(2.0), rel=1e-5)


@pytest.mark.parametrize("loss", ["ppo", "dapo"])
def test_dual_clip_caps_negative_advantage_loss_at_c_abs_a(loss):
    value, grad, met = _one_token(25.0, -1.0, loss=loss, clip_ratio_c=3.0)
    assert (value, grad, met["clip_frac_dual"]) == (pytest.approx(3.0), 0.0, 1.0)
    # four regions, eps 0.2, c 3: (r=5,A=-1) capped at 3 [dual]; (r=2,A=-1) 2 (below the cap);
    # (r=5,A=+1) -1.2 [high]; (r=0.5,A=-1) 0.8 [low]. Only token 1 keeps a gradient: -A r / 4 = 0.5
    ratios, advs = [[5.0, 2.0, 5.0, 0.5]], [[-1.0, -1.0, 1.0, -1.0]]
    cfg = LearnerConfig(loss=loss, eps=0.2, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
    b = _batch(ratios, advs, [[1, 1, 1, 1]])
    value, met = compute_policy_loss(cfg, b)
    value.backward()
    assert value.item() == pytest.approx((3.0 + 2.0 - 1.2 + 0.8) / 4, rel=1e-6)
    assert b.logp.grad[0].tolist() == pytest.approx([0.0, 0.5, 0.0, 0.0], abs=1e-7)
    assert (met["clip_frac_dual"], met["clip_frac_high"], met["clip_frac_low"]) == (0.25, 0.25, 0.25)


def test_gspo_sequence_log_ratio_capped_at_10_and_token_log_ratio_at_20():
    old = torch.full((1, 3), -40.0)
    logp = (old + torch.tensor([[15.0, 15.0, 30.0]])).requires_grad_(True)  # token log r 30 -> 20; mean 50/3 -> 10
    b = LossInputs(logp=logp, old_logp=old, advantages=torch.full((1, 3), -1.0), mask=torch.ones(1, 3))
    loss, met = compute_policy_loss(LearnerConfig(loss="gspo"), b)
    assert loss.item() == pytest.approx(math.exp(10.0), rel=1e-5) and met["ratio_max"] == pytest.approx(
        math.exp(10.0), rel=1e-5
    )


def test_gspo_defaults_to_the_sequence_mean():
    # rows of 4 and 1 action tokens at r = 1, A = +1 and -1: token_mean would give (-4 + 1) / 5 = -0.6
    cfg = LearnerConfig(loss="gspo")
    assert cfg.loss_agg == "seq_mean_token_mean"
    old = torch.full((2, 4), -1.0)
    b = LossInputs(
        logp=old.clone().requires_grad_(True),
        old_logp=old,
        advantages=torch.tensor([[1.0] * 4, [-1.0] * 4]),
        mask=torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]]),
    )
    loss, _ = compute_policy_loss(cfg, b)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="GSPO is defined per sequence"):
        LearnerConfig(loss="gspo", loss_agg="token_mean")


def test_gspo_clip_fractions_per_sequence_and_per_token():
    # the sequences of test_gspo_sequence_clipping_and_gradient: 3+3+2+2 action tokens; seq 0 (3 tokens)
    # clipped high, seq 2 (2 tokens) clipped low
    lr = [[1e-3, -2e-4, 5e-4, 0.0], [1e-4, -1e-4, 2e-4, 0.0], [-1e-3, 2e-4, 0.0, 0.0], [5e-4, 7e-4, 0.0, 0.0]]
    old = torch.full((4, 4), -2.0, dtype=torch.float64)
    b = LossInputs(
        logp=old + torch.tensor(lr, dtype=torch.float64),
        old_logp=old,
        advantages=torch.tensor([[1.5] * 4, [-0.5] * 4, [-2.0] * 4, [-1.0] * 4], dtype=torch.float64),
        mask=torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.float64),
    )
    _, met = compute_policy_loss(LearnerConfig(loss="gspo"), b)
    assert (met["clip_frac_high"], met["clip_frac_low"]) == (0.25, 0.25)
    assert met["clip_frac_high_token"] == pytest.approx(0.3) and met["clip_frac_low_token"] == pytest.approx(0.2)


def test_tis_weight_log_ratio_clamped():
    # logp_old - logp_infer = -25 -> w = e^-20, not e^-25
    b = _batch([[1.0]], [[1.0]], [[1]], old=[[-30.0]], inference_logp=torch.tensor([[-5.0]]))
    _, met = compute_policy_loss(LearnerConfig(tis_cap=2.0), b)
    assert met["tis_weight_mean"] == pytest.approx(math.exp(-20.0), rel=1e-5)


@pytest.mark.parametrize(
    "name,value,grad",
    [
        # d = logp - ref = 0.5
        ("k1", 0.5, 1.0),
        ("k2", 0.125, 0.5),
        ("k3", math.exp(-0.5) - 0.5, 1 - math.exp(-0.5)),
        ("k1+", 0.5, 0.5),
        ("k3+", math.exp(-0.5) - 0.5, 0.5),
    ],
)
def test_kl_estimators_by_hand(name, value, grad):
    logp = torch.tensor([[-1.0]], requires_grad=True)
    b = LossInputs(
        logp=logp,
        old_logp=logp.detach(),
        advantages=torch.zeros(1, 1),
        mask=torch.ones(1, 1),
        ref_logp=torch.tensor([[-1.5]]),
    )
    loss, met = compute_policy_loss(LearnerConfig(loss="pg", kl_coef=1.0, kl_estimator=name), b)
    loss.backward()
    assert met["kl_ref"] == pytest.approx(value, rel=1e-6) and loss.item() == pytest.approx(value, rel=1e-6)
    assert logp.grad.item() == pytest.approx(grad, rel=1e-6)


def test_k3_clamped_for_huge_log_ratio():
    # ref - logp = 28 -> clamped to 20 -> e^20 - 21, then k3 clamped to 10; gradient 0
    logp = torch.tensor([[-30.0]], requires_grad=True)
    b = LossInputs(
        logp=logp,
        old_logp=logp.detach(),
        advantages=torch.zeros(1, 1),
        mask=torch.ones(1, 1),
        ref_logp=torch.tensor([[-2.0]]),
    )
    loss, _ = compute_policy_loss(LearnerConfig(loss="pg", kl_coef=1.0), b)
    loss.backward()
    assert loss.item() == 10.0 and logp.grad.item() == 0.0


def test_cispo_keeps_a_gradient_on_every_token():
    # r = [1.5, 0.5, 1.1], A = [1, -1, -2], bounds [0, 1.28]: weights [1.28, 0.5, 1.1];
    # loss_t = -w A logp, gradient -w A / 3
    ratios, advs = [[1.5, 0.5, 1.1]], [[1.0, -1.0, -2.0]]
    b = _batch(ratios, advs, [[1, 1, 1]])
    loss, met = compute_policy_loss(LearnerConfig(loss="cispo"), b)
    loss.backward()
    logp = b.logp.detach()[0].tolist()
    assert loss.item() == pytest.approx(-(1.28 * logp[0] - 0.5 * logp[1] - 2.2 * logp[2]) / 3, rel=1e-6)
    assert b.logp.grad[0].tolist() == pytest.approx([-1.28 / 3, 0.5 / 3, 2.2 / 3], rel=1e-6)
    assert (met["clip_frac_high"], met["clip_frac_low"]) == (pytest.approx(1 / 3), 0.0)
    # ppo drops token 0 (r > 1.2 with A > 0); cispo keeps it
    b = _batch(ratios, advs, [[1, 1, 1]])
    compute_policy_loss(LearnerConfig(loss="ppo"), b)[0].backward()
    assert b.logp.grad[0, 0].item() == 0.0
