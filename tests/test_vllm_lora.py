"""The `vllm` engine with a LoRA (peft) policy: vLLM serves the base weights plus the synced adapter.

One in-process engine start covers generation, log-probs vs the learner, and adapter sync; server
mode is a separate `slow` test (a second engine start). The adapter has rank 4, so vLLM runs with
max_lora_rank 8 (its smallest allowed rank >= 4). LoRA B starts at zero in peft, so the adapter is
perturbed before the engine starts (the initial adapter must already be applied) and again before
each sync (the engine must move to the new adapter).
"""

from __future__ import annotations

import json

import pytest
import torch

from eprl.agents.engines.vllm import VLLM_MISSING

try:
    import vllm  # noqa: F401
except Exception:  # noqa: BLE001 - any import failure means "no usable vllm here"
    pytest.skip(VLLM_MISSING, allow_module_level=True)

from safetensors.torch import load_file  # noqa: E402
from vllm_common import ENGINE_KW, chat_prompts, engine_continuation_logprobs, learner_logprobs, start_engine  # noqa: E402

from eprl.training.config import EngineConfig, SamplingConfig  # noqa: E402
from eprl.training.logprobs import model_logprobs  # noqa: E402

pytestmark = pytest.mark.vllm
TEMPERATURE = 0.7
RANK = 4
MEASURED: dict[str, float] = {}  # max |engine - learner| log-prob per check, printed with -s


def _lora_model(tokenizer, seed: int):
    import peft

    from eprl.training.tiny_default import build_model

    base = build_model(tokenizer, seed=seed).eval()
    base_weights = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(
        base,
        peft.LoraConfig(
            r=RANK, lora_alpha=8, task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    _perturb_lora(model, seed)
    return model.eval(), base_weights


def _perturb_lora(model, seed: int, scale: float = 0.3) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn(p.shape, generator=gen) * scale)


def _assert_match_learner(model, prompts, gens, key: str, temperature=TEMPERATURE):
    worst = 0.0
    for prompt, gen in zip(prompts, gens):
        assert len(gen.logprobs) == len(gen.token_ids) > 0
        ref = learner_logprobs(model, prompt, gen.token_ids, temperature)
        diff = (torch.tensor(gen.logprobs, dtype=torch.float32) - ref).abs().max().item()
        worst = max(worst, diff)
        assert diff <= 1e-4, diff
    MEASURED[key] = worst
    print(f"max |logp engine - learner| {key}: {worst:.2e}")


@pytest.fixture(scope="module")
def lora_local(tiny_tokenizer, tmp_path_factory):
    model, base_weights = _lora_model(tiny_tokenizer, seed=0)
    weights_dir = tmp_path_factory.mktemp("vllm-lora")
    engine = start_engine(model, tiny_tokenizer, EngineConfig(type="vllm", weights_dir=str(weights_dir), **ENGINE_KW))
    yield model, base_weights, engine, weights_dir
    engine.close()


def test_lora_engine_serves_base_plus_adapter(lora_local, tiny_tokenizer):
    model, base_weights, engine, weights_dir = lora_local
    assert engine.backend.llm.llm_engine.vllm_config.lora_config.max_lora_rank == 8  # smallest allowed >= 4
    # The served base is exactly the base weights (a tied lm_head is not stored, as in save_pretrained).
    served = load_file(str(weights_dir / "model.safetensors"))
    assert set(served) == set(base_weights) - {"lm_head.weight"}
    assert all(torch.equal(served[k], base_weights[k]) for k in served)
    assert json.loads((weights_dir / "lora-v1" / "adapter_config.json").read_text())["r"] == RANK
    prompts = chat_prompts(tiny_tokenizer)
    stop = [tiny_tokenizer.eos_token_id]
    gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=12), stop)
    _assert_match_learner(model, prompts, gens, "sampled, initial adapter")
    # The adapter is applied: the base alone gives other log-probs for the same tokens.
    with model.disable_adapter():
        base_lp = learner_logprobs(model, prompts[0], gens[0].token_ids, TEMPERATURE)
    assert (torch.tensor(gens[0].logprobs) - base_lp).abs().max() > 0.05
    gens = engine.generate(prompts[:1], SamplingConfig(greedy=True, max_new_tokens=6), stop)
    _assert_match_learner(model, prompts[:1], gens, "greedy", temperature=1.0)


def test_lora_sync_changes_logprobs_to_the_learners(lora_local, tiny_tokenizer):
    model, base_weights, engine, weights_dir = lora_local
    prompt = chat_prompts(tiny_tokenizer)[0]
    continuation = engine.generate([prompt], SamplingConfig(max_new_tokens=8), [])[0].token_ids
    fixed = prompt + continuation

    def engine_prompt_logprobs() -> torch.Tensor:  # log-probs of the fixed continuation (temperature 1)
        return engine_continuation_logprobs(engine, prompt, continuation)

    before = engine_prompt_logprobs()
    assert torch.allclose(before, learner_logprobs(model, prompt, continuation, 1.0), atol=1e-4, rtol=0)
    # A few optimizer steps on the adapter only (what the learner does), then sync.
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    opt = torch.optim.AdamW(trainable, lr=0.01)
    ids = torch.tensor([fixed])
    for _ in range(3):
        opt.zero_grad()
        logp, _ = model_logprobs(model, ids, with_entropy=False)
        logp[0, len(prompt) - 1 :].sum().backward()  # raise the continuation's likelihood
        opt.step()
    old_adapter = engine.adapter
    engine.sync_weights(model)
    assert engine.adapter.int_id == old_adapter.int_id + 1 and engine.adapter.name != old_adapter.name
    assert not old_adapter.path.exists() and (engine.adapter.path / "adapter_model.safetensors").is_file()
    after = engine_prompt_logprobs()
    learner_after = learner_logprobs(model, prompt, continuation, 1.0)
    assert torch.allclose(after, learner_after, atol=1e-4, rtol=0), (after - learner_after).abs().max().item()
    assert (after - before).abs().max() > 0.05
    MEASURED["prompt log-probs after sync"] = (after - learner_after).abs().max().item()
    print(
        f"max |logp engine - learner| after sync (fixed continuation): {MEASURED['prompt log-probs after sync']:.2e}, "
        f"change from sync {(after - before).abs().max().item():.3f}"
    )
    # The base was not rewritten and still equals the base weights; new samples come from the new adapter.
    served = load_file(str(weights_dir / "model.safetensors"))
    assert all(torch.equal(served[k], base_weights[k]) for k in served)
    prompts = chat_prompts(tiny_tokenizer)
    gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=8), [])
    _assert_match_learner(model, prompts, gens, "sampled after sync")


@pytest.mark.slow
def test_lora_server_mode_over_http(tiny_tokenizer, tmp_path):
    import httpx

    model, _ = _lora_model(tiny_tokenizer, seed=1)
    cfg = EngineConfig(type="vllm", launch_server=True, weights_dir=str(tmp_path / "weights"), **ENGINE_KW)
    engine = start_engine(model, tiny_tokenizer, cfg)  # closes the in-process engine first
    try:
        url = engine.backend.urls[0]
        prompts = chat_prompts(tiny_tokenizer)
        stop = [tiny_tokenizer.eos_token_id]
        gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=10), stop)
        _assert_match_learner(model, prompts, gens, "server, initial adapter")
        server = engine.backend.server
        _perturb_lora(model, seed=2)
        engine.sync_weights(model)
        assert engine.backend.server is server
        served = {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
        assert "eprl-v2" in served and "eprl-v1" not in served  # old adapter unloaded
        gens = engine.generate(prompts, SamplingConfig(temperature=TEMPERATURE, max_new_tokens=10), stop)
        _assert_match_learner(model, prompts, gens, "server, after sync")
    finally:
        engine.close()
    assert server.proc.poll() is not None
