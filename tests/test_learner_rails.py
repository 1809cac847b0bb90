"""The learner's rails (issues #10, #13): non-finite steps are skipped and counted; the lm_head in float32
under bf16 autocast."""

from __future__ import annotations

import math

import torch
from torch import nn

from eprl.training.config import LearnerConfig
from eprl.training.learner import Learner
from eprl.training.logprobs import token_logprobs_and_entropy

torch.set_num_threads(1)


def _batch(tokenizer, rewards, seed=0):
    from eprl.agents.trajectory import Trajectory
    from eprl.training.batch import collate

    torch.manual_seed(seed)
    ids = torch.randint(3, len(tokenizer), (len(rewards), 12)).tolist()
    trajs = [
        Trajectory(t, [0] * 6 + [1] * 6, [0.0] * 12, [(6, 12)], r, r > 0, "t", 0, "terminated")
        for t, r in zip(ids, rewards)
    ]
    return collate(trajs, tokenizer.pad_token_id)


def _copy(model):
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    return fresh


def test_non_finite_loss_skips_the_step_and_is_counted(tiny_model, tiny_tokenizer):
    model = _copy(tiny_model)
    learner = Learner(model, LearnerConfig(lr=0.05), temperature=1.0, max_len_norm=64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = learner.step(
        _batch(tiny_tokenizer, [float("nan"), 1.0, 0.0, 1.0])
    )  # NaN reward -> NaN advantage -> NaN loss
    assert metrics["skipped_steps"] == 1.0 and not math.isfinite(metrics["loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a skipped step changed the weights"
    assert learner.optimizer.state_dict()["state"] == {}  # AdamW never stepped: no moments, no step count
    assert all(p.grad is None for p in model.parameters())
    assert math.isfinite(learner.cumulative_entropy) and learner.controller.target_entropy is not None
    # the next, finite batch trains normally
    metrics = learner.step(_batch(tiny_tokenizer, [0.0, 1.0, 0.0, 1.0]))
    assert metrics["skipped_steps"] == 0.0 and math.isfinite(metrics["loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_every_skipped_step_is_counted(tiny_model, tiny_tokenizer):
    # 2 epochs over a NaN batch: two optimizer steps, both skipped (a count, not a mean)
    learner = Learner(_copy(tiny_model), LearnerConfig(lr=0.05, epochs=2), temperature=1.0, max_len_norm=64)
    assert learner.step(_batch(tiny_tokenizer, [float("nan")] * 4))["skipped_steps"] == 2.0


def test_fp32_head_under_bf16_autocast_matches_fp32():
    torch.manual_seed(0)
    head = nn.Linear(256, 4096, bias=False)
    hidden = torch.randn(2, 128, 256)
    targets = torch.randint(0, 4096, (2, 128))
    ref, ref_ent = token_logprobs_and_entropy(hidden, head, targets, chunk_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = token_logprobs_and_entropy(hidden, head, targets, chunk_size=64)
        fp32, fp32_ent = token_logprobs_and_entropy(hidden, head, targets, chunk_size=64, head_fp32=True)
    assert fp32.dtype == torch.float32
    assert (fp32 - ref).abs().max().item() < 1e-4 and (fp32_ent - ref_ent).abs().max().item() < 1e-4
    assert (bf16 - ref).abs().mean().item() > 1e-3  # the rounding the option removes (~7e-3 in the issue)
    # gradients: the fp32 head under autocast equals the plain fp32 computation
    h1, h2 = hidden.clone().requires_grad_(True), hidden.clone().requires_grad_(True)
    token_logprobs_and_entropy(h1, head, targets, chunk_size=64)[0].sum().backward()
    w_ref = head.weight.grad.clone()
    head.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = token_logprobs_and_entropy(h2, head, targets, chunk_size=64, head_fp32=True)
    lp.sum().backward()
    assert torch.allclose(h1.grad, h2.grad, atol=1e-5) and torch.allclose(head.weight.grad, w_ref, atol=1e-4)


def test_fp32_head_is_the_default_for_16_bit(tiny_model):
    assert Learner(_copy(tiny_model), LearnerConfig(), temperature=1.0, max_len_norm=8, dtype="bf16").head_fp32
    assert not Learner(
        _copy(tiny_model), LearnerConfig(fp32_lm_head=False), temperature=1.0, max_len_norm=8, dtype="bf16"
    ).head_fp32
    assert not Learner(_copy(tiny_model), LearnerConfig(), temperature=1.0, max_len_norm=8).head_fp32
