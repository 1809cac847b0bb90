"""bench/fused_loss.py (the `fused` variant of bench/logprob_memory.py): values and gradients equal autograd's."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from fused_loss import fused_token_objective  # noqa: E402

from eprl.training.config import LearnerConfig  # noqa: E402
from eprl.training.logprobs import causal_lm_parts  # noqa: E402
from eprl.training.losses import LossInputs, _masked, compute_policy_loss, ppo_loss  # noqa: E402

torch.set_num_threads(1)


def _reference_logp_entropy(hidden, head, targets, temperature):
    """Unchunked autograd: log_softmax of the full float32 logits."""
    logits = head(hidden).to(torch.promote_types(head.weight.dtype, torch.float32)) / temperature
    logp_all = torch.log_softmax(logits, -1)
    return logp_all.gather(-1, targets[..., None]).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def _grads(params):
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


def _assert_close(got, want, rel, scale=None):
    """max|got - want| <= rel * max|want| (or rel * scale: a sum's value is compared to the sum of |terms|)."""
    for g, w in zip(got, want):
        ref = w.abs().max().clamp_min(1e-30) if scale is None else scale
        assert (g - w).abs().max() <= rel * ref, ((g - w).abs().max() / ref).item()


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_objective_matches_unchunked(dtype, rel, chunk_size, temperature, bias):
    torch.manual_seed(0)
    B, T, H, V = 2, 9, 16, 50
    head = nn.Linear(H, V, bias=bias).to(dtype)
    hidden = torch.randn(B, T, H, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, V, (B, T))
    a, b = torch.randn(B, T, dtype=dtype), torch.randn(B, T, dtype=dtype)
    params = [hidden, *head.parameters()]

    obj, lp, ent = fused_token_objective(
        hidden,
        head,
        targets,
        lambda l, e, x: x["a"] * l + x["b"] * e,
        temperature=temperature,
        chunk_size=chunk_size,
        extra={"a": a, "b": b},
    )
    (3.0 * obj).backward()  # upstream scalar gradient is applied
    got = _grads(params)
    rlp, rent = _reference_logp_entropy(hidden, head, targets, temperature)
    robj = (a * rlp + b * rent).sum()
    (3.0 * robj).backward()
    want = _grads(params)

    assert obj.dtype == lp.dtype == ent.dtype == dtype and lp.shape == ent.shape == (B, T)
    assert not lp.requires_grad and not ent.requires_grad
    _assert_close([lp, ent], [rlp.detach(), rent.detach()], rel)
    _assert_close([obj], [robj.detach()], rel, scale=((a * rlp).abs() + (b * rent).abs()).sum().detach())
    _assert_close(got, want, rel)


def _ppo_setup(tiny_model, loss_agg, entropy_coef, dtype):
    torch.manual_seed(1)
    backbone, head = causal_lm_parts(tiny_model.to(dtype))
    B, T = 3, 11
    ids = torch.randint(0, tiny_model.config.vocab_size, (B, T + 1))
    with torch.no_grad():
        hidden = backbone(input_ids=ids[:, :-1], use_cache=False).last_hidden_state
    hidden = (hidden + 0.5 * torch.randn_like(hidden)).requires_grad_()
    targets = ids[:, 1:]
    mask = (torch.rand(B, T) < 0.6).to(dtype)
    mask[2] = 0  # a sequence without action tokens
    mask[0, 0] = 1
    with torch.no_grad():
        ref_lp, _ = _reference_logp_entropy(hidden, head, targets, 1.0)
    old = ref_lp + 0.3 * torch.randn(B, T, dtype=dtype)  # ratios on both sides of the clip range
    old[~mask.bool()] = float("nan")  # garbage at masked positions must not leak
    adv = torch.randn(B, T, dtype=dtype)
    cfg = LearnerConfig(loss="ppo", loss_agg=loss_agg, eps=0.2, entropy_coef=entropy_coef)
    return cfg, head, hidden, targets, mask, old, adv


@pytest.mark.parametrize("dtype,rel", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean_token_mean"])
@pytest.mark.parametrize("entropy_coef", [0.0, 0.05])
def test_ppo_clip_on_tiny_qwen3_matches_compute_policy_loss(tiny_model, dtype, rel, loss_agg, entropy_coef):
    cfg, head, hidden, targets, mask, old, adv = _ppo_setup(tiny_model, loss_agg, entropy_coef, dtype)
    params = [hidden, head.weight]
    m = mask > 0
    if loss_agg == "token_mean":
        weight = mask / mask.sum()
    else:  # 1 / (n_seq_with_tokens * n_tok(seq))
        n_tok = mask.sum(-1, keepdim=True)
        weight = mask / (n_tok.clamp_min(1) * (n_tok > 0).sum())

    def per_token(lp, ent, x):
        terms = ppo_loss(LossInputs(logp=lp, old_logp=x["old"], advantages=x["adv"], mask=x["mask"]), cfg)
        return x["w"] * (terms.loss - cfg.entropy_coef * _masked(ent, x["mask"] > 0))

    obj, lp, ent = fused_token_objective(
        hidden, head, targets, per_token, chunk_size=5, extra={"old": old, "adv": adv, "mask": mask, "w": weight}
    )
    obj.backward()
    got = _grads(params)
    rlp, rent = _reference_logp_entropy(hidden, head, targets, 1.0)
    loss, _ = compute_policy_loss(cfg, LossInputs(logp=rlp, old_logp=old, advantages=adv, mask=mask, entropy=rent))
    loss.backward()
    want = _grads(params)

    _assert_close([lp, ent], [rlp.detach(), rent.detach()], rel)
    terms = ppo_loss(LossInputs(logp=rlp, old_logp=old, advantages=adv, mask=mask), cfg).loss
    _assert_close(
        [obj], [loss.detach()], rel, scale=(weight * (terms.abs() + entropy_coef * rent.abs())).sum().detach()
    )
    _assert_close(got, want, rel)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
    assert (got[0][~m] == 0).all()  # masked tokens: exactly zero hidden gradient
    if entropy_coef:  # with the entropy term every action token has a gradient (PPO alone: clipped ones don't)
        assert (got[0][m].abs().sum(-1) > 0).all()


def test_no_grad_and_errors():
    torch.manual_seed(0)
    head = nn.Linear(8, 20, bias=False)
    hidden, targets = torch.randn(6, 8), torch.randint(0, 20, (6,))
    with torch.no_grad():
        obj, lp, ent = fused_token_objective(hidden, head, targets, lambda l, e, x: l + e, chunk_size=4)
    rlp, rent = _reference_logp_entropy(hidden, head, targets, 1.0)
    assert torch.allclose(obj, (rlp + rent).sum().detach(), atol=1e-5) and not obj.requires_grad
    with pytest.raises(TypeError, match="nn.Linear"):
        fused_token_objective(hidden, nn.Sequential(head), targets, lambda l, e, x: l)
    with pytest.raises(ValueError, match="extra"):
        fused_token_objective(hidden, head, targets, lambda l, e, x: l, extra={"a": torch.ones(5)})
    obj, _, _ = fused_token_objective(hidden, head, targets, lambda l, e, x: l)
    obj.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        obj.backward()
