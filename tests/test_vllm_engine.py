"""The `vllm` engine on a real (CPU or GPU) vLLM: generation, log-probs vs the learner, weight sync, server mode.

Engine starts cost 25-50 s on CPU, so the module starts exactly two (one in-process LLM shared by
the first two tests, then one server), never both at once (`_start` closes the previous one).
"""

from __future__ import annotations

import pytest
import torch

from eprl.agents.engines.vllm import VLLM_MISSING

try:
    import vllm  # noqa: F401
except Exception:  # noqa: BLE001 - any import failure means "no usable vllm here"
    pytest.skip(VLLM_MISSING, allow_module_level=True)

from vllm_common import ENGINE_KW, chat_prompts, engine_continuation_logprobs, learner_logprobs, start_engine  # noqa: E402

from eprl.agents.engines import SamplingError  # noqa: E402
from eprl.training.config import EngineConfig, SamplingConfig  # noqa: E402

pytestmark = pytest.mark.vllm
TEMPERATURE = 0.7


def _fresh_model(tokenizer, seed: int):
    from eprl.training.tiny_default import build_model

    return build_model(tokenizer, seed=seed).eval()


def _assert_match_learner(model, prompts, gens, temperature=TEMPERATURE):
    for prompt, gen in zip(prompts, gens):
        assert len(gen.logprobs) == len(gen.token_ids) > 0
        ref = learner_logprobs(model, prompt, gen.token_ids, temperature)
        got = torch.tensor(gen.logprobs, dtype=torch.float32)
        assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max().item()


def _perturb(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def local(tiny_tokenizer, tmp_path_factory):
    model = _fresh_model(tiny_tokenizer, seed=0)
    cfg = EngineConfig(type="vllm", weights_dir=str(tmp_path_factory.mktemp("vllm-local")), **ENGINE_KW)
    engine = start_engine(model, tiny_tokenizer, cfg)
    yield model, engine
    engine.close()


def test_generation_and_logprobs_equal_learner(local, tiny_tokenizer):
    model, engine = local
    prompts = chat_prompts(tiny_tokenizer)
    stop = [tiny_tokenizer.eos_token_id]
    gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=10), stop)
    for gen in gens:
        assert (gen.finish_reason == "stop" and gen.token_ids[-1] in stop) or (
            gen.finish_reason == "length" and len(gen.token_ids) == 10
        )
    _assert_match_learner(model, prompts, gens)
    # A wide stop set: turns end early, on (and including) a stop token, which appears nowhere before.
    wide = list(range(0, len(tiny_tokenizer), 2))
    gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=30), wide)
    assert any(g.finish_reason == "stop" for g in gens)
    for gen in gens:
        if gen.finish_reason == "stop":
            assert gen.token_ids[-1] in wide and not set(gen.token_ids[:-1]) & set(wide)
    _assert_match_learner(model, prompts, gens)
    # Greedy (evaluation): log-probs at temperature 1, like `hf`.
    gens = engine.generate(prompts[:1], SamplingConfig(greedy=True, max_new_tokens=6), stop)
    _assert_match_learner(model, prompts[:1], gens, temperature=1.0)
    with pytest.raises(SamplingError, match="top_p"):
        engine.generate(prompts, SamplingConfig(top_p=0.9), stop)


def test_weight_sync_changes_logprobs_to_the_learners(local, tiny_tokenizer):
    model, engine = local
    prompt = chat_prompts(tiny_tokenizer)[0]
    continuation = engine.generate([prompt], SamplingConfig(max_new_tokens=8), [])[0].token_ids

    def engine_prompt_logprobs() -> torch.Tensor:  # log-probs of the fixed continuation (temperature 1)
        return engine_continuation_logprobs(engine, prompt, continuation)

    before = engine_prompt_logprobs()
    assert torch.allclose(before, learner_logprobs(model, prompt, continuation, 1.0), atol=1e-4, rtol=0)
    _perturb(model, seed=0)
    engine.sync_weights(model)
    after = engine_prompt_logprobs()
    learner_after = learner_logprobs(model, prompt, continuation, 1.0)
    assert (after - before).abs().max() > 0.05
    assert torch.allclose(after, learner_after, atol=1e-4, rtol=0), (after - learner_after).abs().max().item()
    # New samples come from the new weights, at the sampling temperature.
    prompts = chat_prompts(tiny_tokenizer)
    gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=8), [])
    _assert_match_learner(model, prompts, gens)


def test_server_mode_over_http(tiny_tokenizer, tmp_path):
    model = _fresh_model(tiny_tokenizer, seed=1)
    cfg = EngineConfig(type="vllm", launch_server=True, weights_dir=str(tmp_path / "weights"), **ENGINE_KW)
    engine = start_engine(model, tiny_tokenizer, cfg)
    try:
        prompts = chat_prompts(tiny_tokenizer)
        stop = [tiny_tokenizer.eos_token_id]
        gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=10), stop)
        assert [len(g.token_ids) == 10 or g.token_ids[-1] in stop for g in gens] == [True] * 3
        _assert_match_learner(model, prompts, gens)
        server = engine.backend.server
        _perturb(model, seed=1)
        engine.sync_weights(model)
        assert engine.backend.server is server, "reload endpoint failed and the server was restarted"
        gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=10), stop)
        _assert_match_learner(model, prompts, gens)
    finally:
        engine.close()
    assert server.proc.poll() is not None
