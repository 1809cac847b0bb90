"""`hf` engine: transformers `generate` on the learner's own model (colocated, CPU-friendly).

Log-probs are recomputed from the raw logits in float32 as log_softmax(logits / T), the same
formula the learner uses, so sampler and learner agree up to float rounding.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from . import register_engine
from .base import Generation, check_unbiased


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 64):
        self.model = model
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch_size = batch_size

    def sync_weights(self, model) -> None:
        # Colocated: the engine samples from the very module the learner updates.
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], sampling, stop_token_ids: Sequence[int]) -> list[Generation]:
        check_unbiased(sampling)
        out: list[Generation] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._generate_batch(prompts[start:start + self.batch_size], sampling, list(stop_token_ids)))
        return out

    def _generate_batch(self, prompts, sampling, stop_ids: list[int]) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt):] = 1
        temperature = 1.0 if sampling.greedy else sampling.temperature
        config = GenerationConfig(
            do_sample=not sampling.greedy, temperature=temperature if not sampling.greedy else None,
            top_k=sampling.top_k or None, top_p=sampling.top_p if sampling.top_p < 1.0 else None,
            max_new_tokens=sampling.max_new_tokens, eos_token_id=stop_ids, pad_token_id=self.pad_id,
            return_dict_in_generate=True, output_logits=True)
        was_training = self.model.training
        self.model.eval()
        result = self.model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                     generation_config=config)
        self.model.train(was_training)
        new_tokens = result.sequences[:, width:].cpu()
        logits = torch.stack(result.logits, dim=1).float().cpu()  # [B, steps, V], raw (unwarped)
        logprobs = F.log_softmax(logits / temperature, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
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


@register_engine("hf")
def _make_hf(model, tokenizer, cfg) -> HFEngine:
    return HFEngine(model, tokenizer, batch_size=cfg.batch_size)
