"""Shared by the `vllm` test modules: one engine alive at a time, prompts, the learner's reference log-probs.

Imports no vLLM itself (the test modules skip when it is missing).
"""

from __future__ import annotations

import torch

from eprl.agents.chat import ChatAgent
from eprl.agents.engines import make_engine
from eprl.training.logprobs import model_logprobs

ENGINE_KW = dict(gpu_memory_utilization=0.1, max_model_len=512, dtype="float32", enforce_eager=True, batch_size=8)
_LIVE: list = []  # engines started by the vllm tests; at most one runs at a time (2 cores, shared RAM)


def start_engine(model, tokenizer, cfg):
    """A vllm engine for `cfg`, after closing any engine a test started before."""
    while _LIVE:
        _LIVE.pop().close()
    engine = make_engine("vllm", model, tokenizer, cfg)
    _LIVE.append(engine)
    return engine


def chat_prompts(tokenizer) -> list[list[int]]:
    agent = ChatAgent(tokenizer)
    return [agent.start(q).token_ids for q in ["Compute 12+30.", "Compute 5*6-2. Use the tool.", "Hi"]]


def engine_continuation_logprobs(engine, prompt: list[int], continuation: list[int]) -> torch.Tensor:
    """The in-process engine's log-probs (temperature 1) of a fixed `continuation` after `prompt`,
    under the engine's current weights and LoRA adapter, read from vLLM's prompt log-probs."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    fixed = list(prompt) + list(continuation)
    out = engine.backend.llm.generate(
        [TokensPrompt(prompt_token_ids=fixed)],
        SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False),
        use_tqdm=False,
        lora_request=engine.backend.lora_request(engine.adapter),
    )[0]
    return torch.tensor([out.prompt_logprobs[i][fixed[i]].logprob for i in range(len(prompt), len(fixed))])


def learner_logprobs(model, prompt, gen_ids, temperature) -> torch.Tensor:
    """The learner's float32 log-probs of `gen_ids` after `prompt` (what the engine's must equal)."""
    ids = torch.tensor([list(prompt) + list(gen_ids)])
    with torch.no_grad():
        logp, _ = model_logprobs(model, ids, temperature=temperature, with_entropy=False)
    return logp[0, len(prompt) - 1 :]
