import json

import pytest
import torch

from eprl.training.config import EntropyControlConfig, LearnerConfig
from eprl.training.entropy_control import CONTROLLERS, make_controller

torch.set_num_threads(1)


def _cfg(**ec):
    # a valid learner for each controller: adapo moves dapo's eps_high; kl_cov needs more than one update
    kind = ec.get("type", "none")
    return LearnerConfig(
        loss="dapo" if kind == "adapo" else "ppo",
        minibatches=2 if kind == "kl_cov" else 1,
        entropy_control=EntropyControlConfig(**ec),
    )


def _run(ctrl, entropies, read):
    out = []
    for h in entropies:
        ctrl.update(h)
        out.append(read(ctrl))
    return out


# ----------------------------------------------------------------------------- zeta / eps_high schedules
def test_repo_r_zeta_sequence_with_sign_flip():
    c = make_controller(_cfg(type="repo_r"))
    assert (c.zeta, c.zeta_min, c.zeta_max) == (1e-3, 1e-4, 0.05) and not c.needs_entropy
    H = [2.0] + [1.5] * 7 + [2.0] + [2.5] * 10 + [1.5] * 4
    expected = [
        1e-3,  # first call: H* := 2.0, no step
        2e-3,
        4e-3,
        8e-3,
        1.6e-2,
        3.2e-2,
        0.05,
        0.05,  # low: double, capped at zeta_max
        0.05,  # H == H*: hold
        0.025,
        0.0125,
        0.00625,
        0.003125,
        0.0015625,
        0.00078125,
        0.000390625,
        0.0001953125,
        -1e-4,  # 9.77e-5 < zeta_min -> -zeta_min
        -2e-4,  # negative: double
        -1e-4,  # low: halve (-1e-4 is not > -1e-4)
        1e-4,  # -5e-5 > -zeta_min -> +zeta_min
        2e-4,
        4e-4,
    ]
    assert _run(c, H, lambda c: c.zeta) == pytest.approx(expected, rel=1e-9)
    assert c.target_entropy == 2.0 and c.metrics() == {"target_entropy": 2.0, "zeta": pytest.approx(4e-4)}


def test_repo_d_zeta_sequence_bounds_and_explicit_target():
    c = make_controller(_cfg(type="repo_d", target_entropy=1.0, zeta_min=0.5))
    assert (c.zeta, c.zeta_max) == (1.0, 10.0) and c.needs_entropy
    H = [0.5] * 5 + [1.5] * 8 + [0.5] * 4
    expected = [
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,  # explicit target: the first call steps
        5.0,
        2.5,
        1.25,
        0.625,
        -0.5,
        -1.0,
        -2.0,
        -4.0,
        -2.0,
        -1.0,
        -0.5,
        0.5,
    ]  # -0.25 > -0.5 -> +zeta_min
    assert _run(c, H, lambda c: c.zeta) == pytest.approx(expected)
    c = make_controller(_cfg(type="repo_d", target_entropy=1.0, zeta=-9.0, zeta_max=10.0))
    assert _run(c, [2.0, 2.0], lambda c: c.zeta) == [-10.0, -10.0]  # lower bound -zeta_max


def test_tolerance_band_and_non_adaptive():
    c = make_controller(_cfg(type="repo_r", target_entropy=2.0, tolerance=0.25, zeta=0.01))
    assert _run(c, [2.1, 1.9, 2.25, 1.75, 1.7, 2.3], lambda c: c.zeta) == pytest.approx(
        [0.01, 0.01, 0.01, 0.01, 0.02, 0.01]
    )  # |H-H*| <= 0.25 holds
    c = make_controller(_cfg(type="repo_r", adaptive=False, zeta=0.01))
    assert _run(c, [2.0, 1.0, 3.0], lambda c: c.zeta) == [0.01, 0.01, 0.01] and c.target_entropy == 2.0
    c = make_controller(_cfg(type="adapo", adaptive=False))
    assert _run(c, [2.0, 1.0, 3.0], lambda c: c.loss_overrides().get("eps_high", 0.5)) == [0.28, 0.28, 0.28]


def test_adapo_eps_high_sequence():
    c = make_controller(_cfg(type="adapo"))  # start 0.28, gamma 1.5, bounds [eps_low/2 = 0.1, 1.0]
    assert c.loss_overrides().get("eps_high", 0.99) == 0.28
    H = [1.0] + [0.5] * 5 + [1.5] * 8
    expected = [
        0.28,
        0.42,
        0.63,
        0.945,
        1.0,
        1.0,
        1 / 1.5,
        1 / 1.5**2,
        1 / 1.5**3,
        1 / 1.5**4,
        1 / 1.5**5,
        0.1,
        0.1,
        0.1,
    ]
    assert _run(c, H, lambda c: c.loss_overrides().get("eps_high", 0.28)) == pytest.approx(expected)
    c = make_controller(_cfg(type="adapo", eps_high_min=0.25, eps_high_max=0.5, gamma=2.0, target_entropy=1.0))
    assert _run(c, [0.5, 0.5, 2, 2, 2], lambda c: c.loss_overrides().get("eps_high", 0.0)) == pytest.approx(
        [0.5, 0.5, 0.25, 0.25, 0.25]
    )


def test_target_from_several_iterations_relative_band_and_smoothing():
    # H* = mean of the first 3 iterations (1.0); no step before it is known.
    c = make_controller(_cfg(type="repo_d", target_iterations=3, tolerance=0.1, tolerance_relative=True))
    assert _run(c, [0.8, 1.2, 1.0], lambda c: (c.target_entropy, c.zeta)) == [(None, 1.0), (None, 1.0), (1.0, 1.0)]
    assert c.band() == pytest.approx(0.1)
    # +-10% of H* is dead band: 0.91 and 1.09 hold; 0.85 doubles; 1.2 halves.
    assert _run(c, [0.91, 1.09, 0.85, 1.2], lambda c: c.zeta) == pytest.approx([1.0, 1.0, 2.0, 1.0])
    # EMA s = 0.5 starting at H*: H_c = 1.0 -> 0.8 -> 0.7 -> 0.95 -> 1.125; only H_c outside +-0.1 steps.
    c = make_controller(_cfg(type="adapo", smoothing=0.5, tolerance=0.1, tolerance_relative=True, gamma=2.0))
    got = _run(c, [1.0, 0.6, 0.6, 1.2, 1.3], lambda c: (round(c.smoothed, 6), c.loss_overrides().get("eps_high", 0.0)))
    assert got == [(1.0, 0.28), (0.8, 0.56), (0.7, 1.0), (0.95, 1.0), (1.125, 0.5)]
    assert c.metrics()["entropy_smoothed"] == pytest.approx(1.125)


@pytest.mark.parametrize("kind", sorted(CONTROLLERS))
def test_state_dict_round_trip_mid_warmup(kind):
    a = make_controller(_cfg(type=kind, target_iterations=3, smoothing=0.3))
    a.update(2.0)
    b = make_controller(_cfg(type=kind, target_iterations=3, smoothing=0.3))
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for h in [1.0, 1.5, 0.5, 3.0]:
        a.update(h)
        b.update(h)
        assert b.metrics() == a.metrics() and b.loss_overrides().get("eps_high", 0.3) == a.loss_overrides().get(
            "eps_high", 0.3
        )
    assert a.target_entropy == pytest.approx(1.5)


@pytest.mark.parametrize("kind", sorted(CONTROLLERS))
def test_state_dict_round_trip(kind):
    a = make_controller(_cfg(type=kind))
    for h in [2.0, 1.0, 1.0, 3.0]:
        a.update(h)
    state = json.loads(json.dumps(a.state_dict()))
    b = make_controller(_cfg(type=kind))
    b.load_state_dict(state)
    assert b.metrics() == a.metrics() and b.loss_overrides().get("eps_high", 0.3) == a.loss_overrides().get(
        "eps_high", 0.3
    )
    for h in [0.5, 0.5, 4.0]:
        a.update(h)
        b.update(h)
        assert b.metrics() == a.metrics()


def test_remeasure_target_is_measured_like_an_unset_one():
    for kind in ("none", "repo_r"):
        c = make_controller(_cfg(type=kind, target_entropy="remeasure"))
        assert c.target_entropy is None
        c.update(1.25)
        assert c.target_entropy == 1.25


def test_none_controller_and_unknown_name():
    c = make_controller(_cfg())
    adv = torch.randn(2, 3)
    assert (
        c.shape_advantages(adv, -torch.rand(2, 3), None, torch.ones(2, 3)) is adv
        and c.loss_overrides().get("eps_high", 0.3) == 0.3
    )
    cfg = _cfg()
    object.__setattr__(cfg.entropy_control, "type", "magic")
    with pytest.raises(ValueError, match="repo_r"):
        make_controller(cfg)


# ----------------------------------------------------------------------------- REPO-R shaping
def test_repo_r_shaping_by_hand():
    c = make_controller(_cfg(type="repo_r", zeta=0.01))
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 0.0, 5.0]])
    logp = torch.tensor([[-0.1, -5.0, -0.1, -5.0, -1000.0, -1000.0, -3.0, -50.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    out = c.shape_advantages(adv, logp, None, mask)
    assert out.dtype == torch.float32
    assert out[0].tolist() == pytest.approx([1.001, 1.05, -0.999, -0.95, 1.2, -0.8, 0.0, 5.0])
    assert out[0, 1] > out[0, 0]  # rare good token pushed up more than a likely one
    assert abs(out[0, 3]) < abs(out[0, 2])  # rare bad token pushed down less


def test_repo_r_sign_clamp():
    adv = torch.tensor([[-1.0, -1.0, 1.0, 2.0]])
    logp = torch.tensor([[-15.0, -5.0, -15.0, -1.0]])
    mask = torch.ones(1, 4)
    pos = make_controller(_cfg(type="repo_r", zeta=0.1)).shape_advantages(adv, logp, None, mask)
    assert pos[0].tolist() == pytest.approx([0.0, -0.5, 2.5, 2.2])  # -1*(1-1.5) would flip: 0
    neg = make_controller(_cfg(type="repo_r", zeta=-0.1)).shape_advantages(adv, logp, None, mask)
    assert neg[0].tolist() == pytest.approx([-2.5, -1.5, 0.0, 1.8])  # 1*(1-1.5) would flip: 0


# ----------------------------------------------------------------------------- REPO-D shaping
def test_repo_d_shaping_by_hand():
    logp = [[-0.2, -1.5, -3.0], [-0.7, -0.1, -9.0]]
    ent = [[1.0, 1.2, 0.4], [0.9, 0.3, 5.0]]
    adv = [[1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]]
    mask = [[1, 1, 1], [1, 1, 0]]
    num = den = 0.0
    import math

    for i in range(2):
        for j in range(3):
            if mask[i][j]:
                L = logp[i][j] + ent[i][j]
                num += math.exp(logp[i][j]) * adv[i][j] * L
                den += math.exp(logp[i][j]) * L * L
    c_hand = num / den
    ctrl = make_controller(_cfg(type="repo_d", zeta=0.5))
    out = ctrl.shape_advantages(torch.tensor(adv), torch.tensor(logp), torch.tensor(ent), torch.tensor(mask))
    expected = [
        [adv[i][j] - 0.5 * c_hand * (logp[i][j] + ent[i][j]) if mask[i][j] else adv[i][j] for j in range(3)]
        for i in range(2)
    ]
    assert out.tolist()[0] == pytest.approx(expected[0], rel=1e-6) and out.tolist()[1] == pytest.approx(
        expected[1], rel=1e-6
    )
    assert ctrl.metrics()["repo_d_c"] == pytest.approx(c_hand, rel=1e-6)
    # zeta = 1 decorrelates: sum(pi * A' * L) = 0 over action tokens
    full = make_controller(_cfg(type="repo_d")).shape_advantages(
        torch.tensor(adv), torch.tensor(logp), torch.tensor(ent), torch.tensor(mask)
    )
    lp, L, m = torch.tensor(logp), torch.tensor(logp) + torch.tensor(ent), torch.tensor(mask) > 0
    assert abs(float((lp.exp() * full * L)[m].sum())) < 1e-6
    with pytest.raises(ValueError, match="entropy"):
        ctrl.shape_advantages(torch.tensor(adv), torch.tensor(logp), None, torch.tensor(mask))


def test_repo_d_zero_denominator_guard():
    ctrl = make_controller(_cfg(type="repo_d"))
    adv = torch.tensor([[1.0, -1.0]])
    out = ctrl.shape_advantages(adv, torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2))  # L == 0
    assert out.tolist() == [[1.0, -1.0]] and torch.isfinite(out).all()
