"""The hf engine samples from the policy's full distribution (agents/engines/hf.py): every token can come out,
frequencies follow the probabilities, and top-k / top-p filter only when asked (biased sampling, opt-in)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eprl.agents.engines.config import SamplingConfig
from eprl.agents.engines.hf import HFEngine, filter_top_k_top_p, sample_full_distribution, sample_inverse_cdf

torch.set_num_threads(1)


def test_inverse_cdf_sampling_follows_the_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.0, 0.2])
    logp = probs.log().expand(40_000, -1)  # log 0 = -inf, exp(-inf) = 0: an excluded token
    torch.manual_seed(0)
    counts = torch.bincount(sample_inverse_cdf(logp.exp())[0], minlength=4).double() / 40_000
    assert counts[2] == 0
    # binomial standard error at n = 40k is <= 0.0025: 4 sigma
    assert torch.allclose(counts, probs.double(), atol=0.01), counts
    # unnormalised rows (a filtered distribution) are renormalised by the cdf's total
    torch.manual_seed(0)
    half, total = sample_inverse_cdf((probs / 2).expand(40_000, -1))
    assert torch.allclose(total, torch.full_like(total, 0.5))
    assert torch.allclose(torch.bincount(half, minlength=4).double() / 40_000, probs.double(), atol=0.01)


def test_top_k_and_top_p_filters():
    logp = torch.tensor([[0.5, 0.3, 0.2]]).log()
    assert torch.isinf(filter_top_k_top_p(logp, 2, 1.0)).tolist() == [[False, False, True]]
    assert torch.isinf(filter_top_k_top_p(logp, 0, 0.6)).tolist() == [[False, False, True]]  # 0.5 < 0.6: two
    assert torch.isinf(filter_top_k_top_p(logp, 0, 0.4)).tolist() == [[False, True, True]]  # 0.5 reaches 0.4
    assert torch.equal(filter_top_k_top_p(logp, 0, 1.0), logp)  # off: the full distribution, untouched


def _uniform_model(tiny_model):
    """The tiny model with its lm_head zeroed: every next-token distribution is uniform over the vocabulary."""
    with torch.no_grad():
        tiny_model.get_output_embeddings().weight.zero_()
    return tiny_model


def test_samples_cover_the_whole_vocabulary_not_a_top_k(tiny_model, tiny_tokenizer):
    """transformers' generate, given top_k=None, filled in its default top_k=50; the engine must not truncate."""
    model = _uniform_model(tiny_model)
    vocab = model.get_output_embeddings().weight.shape[0]
    assert vocab > 200
    engine = HFEngine(model, tiny_tokenizer)
    torch.manual_seed(0)
    gens = engine.generate([[5, 6, 7]] * 32, SamplingConfig(max_new_tokens=8), stop_token_ids=[])
    drawn = [t for g in gens for t in g.token_ids]
    assert len(drawn) == 256 and all(g.finish_reason == "length" for g in gens)
    # 256 uniform draws over V tokens: E[distinct] = V (1 - (1 - 1/V)^256), > 150 for V > 200; a top-50 gives <= 50
    assert len(set(drawn)) > 120, len(set(drawn))
    assert all(lp == pytest.approx(-math.log(vocab), abs=1e-5) for g in gens for lp in g.logprobs)


def test_top_k_limits_the_samples_only_when_allowed(tiny_model, tiny_tokenizer):
    from eprl.agents.engines.base import SamplingError

    engine = HFEngine(tiny_model, tiny_tokenizer)
    prompt = tiny_tokenizer("Compute 3+4.")["input_ids"]
    with pytest.raises(SamplingError, match="top_k=5"):
        engine.generate([prompt], SamplingConfig(max_new_tokens=1, top_k=5), stop_token_ids=[])
    with torch.no_grad():
        full = F.log_softmax(tiny_model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    torch.manual_seed(0)
    sampling = SamplingConfig(max_new_tokens=1, top_k=5, allow_biased_sampling=True)
    first = [g.token_ids[0] for g in engine.generate([prompt] * 200, sampling, stop_token_ids=[])]
    torch.manual_seed(0)
    unfiltered = [g.token_ids[0] for g in engine.generate([prompt] * 200, SamplingConfig(max_new_tokens=1), [])]
    top5 = set(full.topk(5).indices.tolist())
    assert set(first) <= top5 and len(set(first)) >= 3
    assert not set(unfiltered) <= top5  # the same draws without the filter reach beyond the top 5
    gens = engine.generate([prompt] * 4, sampling, stop_token_ids=[])
    assert all(g.logprobs[0] == pytest.approx(float(full[g.token_ids[0]]), abs=1e-5) for g in gens)  # full dist.


def test_greedy_takes_the_argmax_and_stops_at_a_stop_token(tiny_model, tiny_tokenizer):
    engine = HFEngine(tiny_model, tiny_tokenizer)
    prompt = tiny_tokenizer("Compute 3+4.")["input_ids"]
    gen = engine.generate([prompt], SamplingConfig(max_new_tokens=6, greedy=True), stop_token_ids=[])[0]
    ids = list(prompt)
    for tok in gen.token_ids:  # the same tokens from a plain forward, one argmax at a time
        with torch.no_grad():
            assert tok == int(tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(tok)
    stop = gen.token_ids[2]
    cut = engine.generate([prompt], SamplingConfig(max_new_tokens=6, greedy=True), stop_token_ids=[stop])[0]
    first = gen.token_ids.index(stop)
    assert cut.token_ids == gen.token_ids[: first + 1] and cut.finish_reason == "stop"


def test_two_level_sampling_over_a_large_vocabulary():
    """A vocabulary that is not a multiple of the block, mass spread over blocks, excluded tokens never drawn."""
    torch.manual_seed(1)
    vocab = 1000
    logits = torch.randn(vocab) * 2
    logits[::7] = float("-inf")  # excluded
    probs = torch.softmax(logits, -1).double()
    draws = sample_inverse_cdf(torch.softmax(logits, -1).expand(50_000, -1), block=64)[0]
    assert draws.max() < vocab and not bool((draws % 7 == 0).any())
    freq = torch.bincount(draws, minlength=vocab).double() / 50_000
    top = probs.topk(20).indices  # the likely tokens: frequency within 5 binomial standard errors
    err = (probs[top] * (1 - probs[top]) / 50_000).sqrt()
    assert bool(((freq[top] - probs[top]).abs() <= 5 * err + 1e-4).all())
    assert abs(float(freq[probs < 1e-3].sum() - probs[probs < 1e-3].sum())) < 0.01  # the tail gets its mass


def test_one_pass_sampler_records_the_log_softmax_of_the_drawn_token():
    torch.manual_seed(0)
    z = torch.randn(64, 3000) * 4
    chosen, logp = sample_full_distribution(z)
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, F.log_softmax(z, -1).gather(-1, chosen[:, None]).squeeze(-1), rtol=0, atol=2e-6)
    # frequencies: the most likely token of a peaked row comes out about as often as its probability
    row = torch.tensor([[3.0, 1.0, 0.0, -1.0]]).expand(20_000, -1)
    freq = torch.bincount(sample_full_distribution(row)[0], minlength=4).double() / 20_000
    assert torch.allclose(freq, torch.softmax(row[0], -1).double(), atol=0.015), freq


def test_bfloat16_sampler_samples_from_a_copy_refreshed_at_each_sync(tiny_model, tiny_tokenizer):
    """engine.dtype=bfloat16: the learner's float32 weights stay as they are; the engine samples from a bfloat16
    copy (buffers kept in float32) that follows every update, with log-probs within bfloat16 rounding."""
    engine = HFEngine(tiny_model, tiny_tokenizer, dtype="bfloat16")
    assert engine.model is not tiny_model
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny_model.parameters()} == {torch.float32}
    assert all(b.dtype == b0.dtype for b, b0 in zip(engine.model.buffers(), tiny_model.buffers()))
    prompt = tiny_tokenizer("Compute 3+4.")["input_ids"]
    torch.manual_seed(0)
    gens = engine.generate([prompt] * 8, SamplingConfig(max_new_tokens=4), stop_token_ids=[])
    with torch.no_grad():
        full = F.log_softmax(tiny_model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    gap = max(abs(g.logprobs[0] - float(full[g.token_ids[0]])) for g in gens)
    assert 0 < gap < 0.1, gap  # differs from the float32 policy, by bfloat16 rounding only
    head = tiny_model.get_output_embeddings().weight
    with torch.no_grad():
        head.add_(1.0)  # an "update" of the learner
    copy_head = engine.model.get_output_embeddings().weight
    assert not torch.allclose(copy_head.float(), head, atol=0.5)  # not yet synced
    engine.sync_weights(tiny_model)
    torch.testing.assert_close(copy_head.float(), head, rtol=2**-8, atol=0)  # the same weights, bfloat16-rounded
    assert engine.model.get_output_embeddings().weight is copy_head  # refreshed in place, not copied again
    assert HFEngine(tiny_model, tiny_tokenizer, dtype="float32").model is tiny_model  # the learner's dtype: no copy


def test_prefill_hands_the_lm_head_one_contiguous_row_per_prompt(tiny_model, tiny_tokenizer):
    """logits_to_keep=1 would hand the head a strided [B, 1, H] view, which torch multiplies without folding
    the rows (8x slower in float32, 100x in bfloat16 on CPU); the engine keeps the last column by index."""
    seen = []
    hook = tiny_model.get_output_embeddings().register_forward_pre_hook(
        lambda _, args: seen.append((tuple(args[0].shape), args[0].is_contiguous()))
    )
    try:
        prompts = [tiny_tokenizer(t)["input_ids"] for t in ("Compute 3+4.", "What is 12 times 7?")]
        gens = HFEngine(tiny_model, tiny_tokenizer).generate(prompts, SamplingConfig(max_new_tokens=3), [])
    finally:
        hook.remove()
    assert seen[0] == ((2, 1, tiny_model.config.hidden_size), True)  # the prefill: one row per prompt
    assert all(contiguous for _, contiguous in seen) and len(seen) == max(len(g.token_ids) for g in gens)
