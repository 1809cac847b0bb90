"""Theorem 1 on a tabular softmax policy, float64, exact expectations (no sampling):

    Delta H(s) ~= -eta * E_{a~pi}[ pi(a|s) * A(s,a) * L(s,a) ],   L = log pi(a|s) + H(s)

for one exact policy-gradient step theta <- theta + eta * grad_theta sum_s E_pi[A(s, .)].
A is an advantage: centred under pi in each state (E_pi[A] = 0), which the theorem assumes.
"""

import pytest
import torch

from eprl.training.config import EntropyControlConfig, LearnerConfig
from eprl.training.entropy_control import make_controller

torch.set_num_threads(1)
S, K = 6, 10


def _entropy(theta):
    logp = torch.log_softmax(theta, -1)
    return -(logp.exp() * logp).sum(-1)


def _step(theta, adv, eta):
    """Exact gradient of J(theta) = sum_s sum_a pi(a|s) A(s,a) (A held fixed), one ascent step."""
    th = theta.clone().requires_grad_(True)
    (torch.softmax(th, -1) * adv).sum().backward()
    return theta + eta * th.grad


def _predicted(theta, adv, eta):
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp()
    L = logp + _entropy(theta)[:, None]
    return -eta * (pi * pi * adv * L).sum(-1)  # -eta * E_pi[pi A L] per state


def _setup(seed):
    g = torch.Generator().manual_seed(seed)
    theta = 1.5 * torch.randn(S, K, generator=g, dtype=torch.float64)
    raw = torch.randn(S, K, generator=g, dtype=torch.float64)
    pi = torch.softmax(theta, -1)
    return theta, raw - (pi * raw).sum(-1, keepdim=True)  # centred: E_pi[A] = 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_predicted_vs_measured_entropy_change(seed):
    theta, adv = _setup(seed)
    eta = 1e-3
    measured = _entropy(_step(theta, adv, eta)) - _entropy(theta)
    predicted = _predicted(theta, adv, eta)
    rel = (measured - predicted).norm() / predicted.norm()
    assert rel < 0.05
    assert ((measured - predicted).abs() / predicted.abs()).max() < 0.05  # every state, not just on average
    # the approximation is first order: error shrinks ~linearly with eta
    big = _entropy(_step(theta, adv, 10 * eta)) - _entropy(theta)
    assert (big - _predicted(theta, adv, 10 * eta)).norm() > 5 * (measured - predicted).norm()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_repo_shaped_advantage_raises_entropy_change(seed):
    theta, adv = _setup(seed)
    eta, beta = 1e-3, 0.3
    logp = torch.log_softmax(theta, -1)
    L = logp + _entropy(theta)[:, None]
    shaped = adv - beta * L  # REPO: A' = A - beta L (still centred)
    base = _entropy(_step(theta, adv, eta)) - _entropy(theta)
    repo = _entropy(_step(theta, shaped, eta)) - _entropy(theta)
    # predicted increase: eta * beta * E_pi[pi L^2] > 0 in every state
    gain = eta * beta * (logp.exp() ** 2 * L**2).sum(-1)
    assert torch.all(repo > base)
    assert torch.allclose(repo - base, gain, rtol=0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_repo_d_coefficient_cancels_first_order_drop(seed):
    theta, adv = _setup(seed)
    # make advantage and log-prob positively correlated (the calibrated case: entropy falls)
    logp = torch.log_softmax(theta, -1)
    pi = logp.exp()
    L = logp + _entropy(theta)[:, None]
    adv = adv + 0.8 * L
    adv = adv - (pi * adv).sum(-1, keepdim=True)
    eta = 1e-3
    # REPO-D's c from sampled tokens: Monte Carlo sample of actions from pi, via the controller
    g = torch.Generator().manual_seed(100 + seed)
    a = torch.multinomial(pi, 40000, replacement=True, generator=g)  # [S, N]
    ctrl = make_controller(LearnerConfig(entropy_control=EntropyControlConfig(type="repo_d")))
    tok_logp, tok_adv = logp.gather(1, a).float(), adv.gather(1, a).float()
    tok_ent = _entropy(theta)[:, None].expand_as(a).float()
    ctrl.shape_advantages(tok_adv, tok_logp, tok_ent, torch.ones_like(tok_adv))
    c_exact = (pi * pi * adv * L).sum() / (pi * pi * L * L).sum()
    assert ctrl.last_c == pytest.approx(c_exact.item(), rel=0.05)
    shaped = adv - 1.0 * ctrl.last_c * L  # zeta = 1
    base = (_entropy(_step(theta, adv, eta)) - _entropy(theta)).sum()
    repo_d = (_entropy(_step(theta, shaped, eta)) - _entropy(theta)).sum()
    assert base < 0  # entropy falls without control
    assert abs(repo_d) < 0.1 * abs(base)  # first-order change (nearly) cancelled
