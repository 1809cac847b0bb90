"""`hf` engine: transformers `generate` on the learner's own model (colocated, CPU-friendly).

Log-probs are recomputed from the raw logits in float32 as log_softmax(logits / T), the same
formula the learner uses, so sampler and learner agree up to float rounding. They are taken one step
at a time by a logits processor (`_SampledLogprobs`), not from `output_logits=True`: that kept every
step's [batch x vocab] logits until the end (64 x 64 x 49,152 floats = 805 MB for SmolLM2) and then
normalised them all at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .base import Generation, check_unbiased

if TYPE_CHECKING:
    from .config import EngineConfig, SamplingConfig


class _SampledLogprobs(LogitsProcessor):
    """Sees each step's scores before the temperature warper (HF runs custom processors first): keeps
    log_softmax(scores / T) in float32 for ONE step; the next call, whose input_ids end with the token
    sampled from it, gathers that token's log-prob. `finish` gathers the last step's."""

    def __init__(self, temperature: float):
        self.temperature, self.prev, self.steps = temperature, None, []

    def _gather(self, tokens: torch.Tensor) -> None:
        if self.prev is not None:
            self.steps.append(self.prev.gather(-1, tokens[:, None]).squeeze(-1))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._gather(input_ids[:, -1])
        self.prev = F.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """[B, steps] log-probs of the generated tokens (the last column of `sequences` is the last step's)."""
        self._gather(sequences[:, -1])
        self.prev = None
        return (
            torch.stack(self.steps, dim=1)
            if self.steps
            else sequences.new_zeros((len(sequences), 0), dtype=torch.float32)
        )


def shared_prompt_cache(model, input_ids: torch.Tensor, attention: torch.Tensor):
    """`engine.share_prefix`: the key/value cache of every row's prompt but its last token, each distinct
    (left-padded) prompt run once and copied to its rows; None when every prompt is distinct. `generate`
    then runs only the last prompt token and decodes. Position ids as `generate` makes them for left padding
    (cumsum of the mask - 1, 0 on pads), so the cache equals the plain prefill's up to float rounding."""
    prompts, rows_to_prompt = torch.unique(input_ids, dim=0, return_inverse=True)
    if len(prompts) == len(input_ids) or input_ids.shape[1] < 2:
        return None
    rows = torch.arange(len(input_ids), device=input_ids.device)
    first = torch.full((len(prompts),), len(input_ids), dtype=torch.long, device=input_ids.device)
    first = first.scatter_reduce(0, rows_to_prompt, rows, reduce="amin")  # one row per distinct prompt
    ids, mask = input_ids[first, :-1], attention[first, :-1]
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    cache.batch_select_indices(rows_to_prompt)
    return cache


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 64, share_prefix: bool = False):
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch_size = batch_size
        self.share_prefix = share_prefix

    def sync_weights(self, model) -> None:
        # Colocated: the engine samples from the very module the learner updates.
        self.model = model

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, stop_token_ids: Sequence[int]
    ) -> list[Generation]:
        check_unbiased(sampling)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling, list(stop_token_ids)))
        return out

    def _generate_batch(self, prompts, sampling, stop_ids: list[int]) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        temperature = 1.0 if sampling.greedy else sampling.temperature
        config = GenerationConfig(
            do_sample=not sampling.greedy,
            temperature=temperature if not sampling.greedy else None,
            top_k=sampling.top_k or None,
            top_p=sampling.top_p if sampling.top_p < 1.0 else None,
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=self.pad_id,
        )
        was_training = self.model.training
        self.model.eval()
        recorder = _SampledLogprobs(temperature)
        input_ids, attention = input_ids.to(device), attention.to(device)
        cache = shared_prompt_cache(self.model, input_ids, attention) if self.share_prefix else None
        sequences = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=config,
            logits_processor=LogitsProcessorList([recorder]),
            **({"past_key_values": cache} if cache is not None else {}),
        )
        self.model.train(was_training)
        new_tokens = sequences[:, width:].cpu()
        logprobs = recorder.finish(sequences).cpu()
        gens = []
        stop = set(stop_ids)
        for row in range(len(prompts)):
            ids, lps = [], []
            finish = "length"
            for tok, lp in zip(new_tokens[row].tolist(), logprobs[row].tolist()):
                ids.append(tok)
                lps.append(lp)
                if tok in stop:
                    finish = "stop"
                    break
            gens.append(Generation(ids, lps, finish))
        return gens


def make_hf_engine(model, tokenizer, cfg: EngineConfig) -> HFEngine:
    """The `hf` entry of the engine registry (agents/engines/__init__.py)."""
    return HFEngine(model, tokenizer, batch_size=cfg.batch_size, share_prefix=cfg.share_prefix)
