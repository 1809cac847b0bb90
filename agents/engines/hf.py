"""`hf` engine: the learner's own transformers model (colocated, CPU-friendly), decoded by our own loop.

Each step, for the rows still running, with z the last position's logits divided by T (float32):

    w    = exp(z - max z)                unnormalised probabilities, one pass over the vocabulary
    y    ~ Categorical(w / sum w)        inverse CDF: y = min{j : cdf_j > u * cdf_V}, u ~ U[0, 1)
    record log p(y) = z_y - max z - log sum w      (= log_softmax(z)[y], the learner's formula, to float32 rounding)

then one forward of y against the key/value cache. A row stops at a stop token or the token budget; rows that
stopped leave the batch (their cache rows are dropped), so the last long sample does not carry the others.

Why not transformers' `generate`: in transformers 5 a GenerationConfig field left None is filled from the
model's generation_config.json and then from library defaults, which include top_k=50, so `generate` sampled
from the 50 most likely tokens while the engine recorded log-probs of the full distribution (a silent bias of
every sample, and the learner's ratios). Here the distribution is the one written above and nothing else.
Inverse-CDF sampling draws one uniform per row instead of torch.multinomial's one exponential per vocabulary
entry (16 x 49,152 of them per step for SmolLM2: 15 ms of a ~200 ms step on one core), and the one exp pass
serves both the draw and the recorded log-prob (log_softmax, exp and a float64 copy of the
weights took 5.5 ms a step at 16 x 49,152 on one core; this takes 1 ms).

`top_k` / `top_p` (refused unless `sampling.allow_biased_sampling`) filter the distribution sampled from;
the recorded log-prob stays the full distribution's, log_softmax(z)[y], as the learner recomputes it.
`dtype` (engine.dtype, default auto = the learner's): a bfloat16 sampler reads half the weight bytes per token
and runs avx512_bf16 / AMX matrix products where the CPU has them (2x float32's on this machine's Zen 4 cores,
a 1.3x faster rollout on SmolLM2); its distribution differs from the float32 learner's by bfloat16 rounding,
which the recorded log-probs expose to the learner (mismatch_* metrics, learner.tis_cap).
`share_prefix`: rows with the same prompt (a group's samples) prefill it once; each row decodes from a copy of
its prompt's key/value cache (the same samples up to float rounding; tests/test_shared_prefix.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F

from .base import Generation, check_unbiased

if TYPE_CHECKING:
    from .config import EngineConfig, SamplingConfig


def sample_inverse_cdf(weights: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, V] unnormalised probabilities (>= 0; 0 = excluded) -> ([B] sampled ids, [B] float64 row totals).

    Inverse CDF in two levels: the block of `block` tokens whose cumulative mass first exceeds u
    (u ~ U[0, total)), then the token inside it. One uniform per row, and no sequential cumsum over the whole
    vocabulary. Block sums run in float32 (a sum of 256 terms: relative error ~1e-7, the size of the float32
    logits' own rounding) and the cumulative sums over blocks and inside the chosen block in float64; a float64
    copy of all 16 x 49,152 weights cost more than the rest of the draw."""
    rows, vocab = weights.shape
    if vocab % block:
        weights = F.pad(weights, (0, block - vocab % block))  # zero mass past the vocabulary: never drawn
    blocks = weights.view(rows, -1, block)
    mass = blocks.sum(-1).double()  # [B, blocks]
    cdf = mass.cumsum(-1)
    u = torch.rand((rows, 1), dtype=torch.float64, device=weights.device) * cdf[:, -1:]
    b = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)  # first block with cdf > u: mass > 0
    inner = blocks[torch.arange(rows, device=weights.device), b.squeeze(1)].double().cumsum(-1)  # [B, block]
    rest = (u - (cdf.gather(1, b) - mass.gather(1, b))).clamp_(min=0)
    rest = torch.minimum(rest, inner[:, -1:] * (1 - 2**-40))  # the two sums round differently: stay inside
    j = torch.searchsorted(inner, rest, right=True).clamp_(max=block - 1)  # first token with cdf > rest: p > 0
    return (b * block + j).squeeze(1), cdf[:, -1]


def sample_full_distribution(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, V] float32 scaled logits -> (sampled ids [B], their log-probs [B] float32): the module docstring's step."""
    top = z.amax(-1, keepdim=True)
    weights = (z - top).exp_()
    chosen, total = sample_inverse_cdf(weights)
    logp = (z.gather(-1, chosen[:, None]) - top).squeeze(-1).double() - total.log()
    return chosen, logp.float()


def filter_top_k_top_p(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The biased filters (opt-in): keep the top_k most likely tokens, then the smallest set whose mass reaches
    top_p (the most likely token always stays); the others get -inf."""
    if top_k > 0 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p < 1.0:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of the more likely tokens
        drop = torch.zeros_like(logp, dtype=torch.bool).scatter_(-1, order, mass_before >= top_p)
        logp = logp.masked_fill(drop, float("-inf"))
    return logp


def shared_prompt_rows(input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first row of each distinct prompt [G], each row's prompt index [B]), or None when all are distinct."""
    prompts, rows_to_prompt = torch.unique(input_ids, dim=0, return_inverse=True)
    if len(prompts) == len(input_ids):
        return None
    rows = torch.arange(len(input_ids), device=input_ids.device)
    first = torch.full((len(prompts),), len(input_ids), dtype=torch.long, device=input_ids.device)
    return first.scatter_reduce(0, rows_to_prompt, rows, reduce="amin"), rows_to_prompt


class HFEngine:
    def __init__(self, model, tokenizer, batch_size: int = 64, share_prefix: bool = False, dtype: str = "auto"):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.batch_size = batch_size
        self.share_prefix = share_prefix
        self.dtype = None if dtype == "auto" else getattr(torch, dtype)
        self._copied_from = None
        self.sync_weights(model)

    def sync_weights(self, model) -> None:
        """Colocated: the engine samples from the very module the learner updates, or (dtype set and different
        from the learner's) from a copy of it in that dtype, refreshed here after every update."""
        if self.dtype is None or next(model.parameters()).dtype == self.dtype:
            self.model = model
            return
        if self._copied_from is not model:  # first sync (or another module): a copy, parameters only converted
            self.model, self._copied_from = copy.deepcopy(model), model
            for p in self.model.parameters():  # buffers (rotary inv_freq) stay in their float32
                p.requires_grad_(False)
                p.grad = None
                p.data = p.data.to(self.dtype)
            return
        with torch.no_grad():
            for dst, src in zip(self.model.parameters(), model.parameters(), strict=True):
                dst.copy_(src)

    @torch.no_grad()
    def generate(
        self, prompts: Sequence[Sequence[int]], sampling: SamplingConfig, stop_token_ids: Sequence[int]
    ) -> list[Generation]:
        check_unbiased(sampling)
        out: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                out.extend(self._generate_batch(prompts[start : start + self.batch_size], sampling, stop_token_ids))
        finally:
            self.model.train(was_training)
        return out

    def _prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, positions: torch.Tensor):
        """(last position's logits [B, V], key/value cache of every row); each distinct prompt once if shared."""
        shared = shared_prompt_rows(input_ids) if self.share_prefix else None
        rows = shared[0] if shared is not None else slice(None)
        out = self.model(
            input_ids=input_ids[rows],
            attention_mask=attention[rows],
            position_ids=positions[rows],
            use_cache=True,
            # The last column by index, not logits_to_keep=1: that slices a strided view [B, 1, H] of the hidden
            # states, which torch multiplies by the lm_head without folding rows: 8x slower in float32 and 100x in
            # bfloat16 (it expands the weight per row); the index gathers a contiguous copy first.
            logits_to_keep=torch.tensor([input_ids.shape[1] - 1], device=input_ids.device),
        )
        logits, cache = out.logits[:, -1], out.past_key_values
        if shared is not None:
            cache.batch_select_indices(shared[1])
            logits = logits.index_select(0, shared[1])
        return logits, cache

    def _generate_batch(self, prompts, sampling: SamplingConfig, stop_token_ids: Sequence[int]) -> list[Generation]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends at the same column
            input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[row, width - len(prompt) :] = 1
        input_ids, attention = input_ids.to(device), attention.to(device)
        positions = (attention.cumsum(-1) - 1).clamp_(min=0)  # left pads sit at 0; each prompt starts at 0
        temperature = 1.0 if sampling.greedy else sampling.temperature
        stop = torch.tensor(sorted(set(stop_token_ids)), dtype=torch.long, device=device)
        logits, cache = self._prefill(input_ids, attention, positions)
        next_position = positions[:, -1:] + 1
        tokens: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)
        active = torch.arange(len(prompts), device=device)  # batch rows still running, in cache order
        filtered = sampling.top_k > 0 or sampling.top_p < 1.0
        for step in range(sampling.max_new_tokens):
            z = logits.float() / temperature if temperature != 1.0 else logits.float()  # z / 1 is z
            if sampling.greedy or filtered:
                logp = F.log_softmax(z, dim=-1)
                if sampling.greedy:
                    chosen = logp.argmax(-1)
                else:
                    chosen = sample_inverse_cdf(filter_top_k_top_p(logp, sampling.top_k, sampling.top_p).exp())[0]
                chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1)
            else:
                chosen, chosen_lp = sample_full_distribution(z)
            for row, tok, lp in zip(active.tolist(), chosen.tolist(), chosen_lp.tolist()):
                tokens[row].append(tok)
                logprobs[row].append(lp)
            stopped = torch.isin(chosen, stop)
            for row in active[stopped].tolist():
                finish[row] = "stop"
            if step + 1 == sampling.max_new_tokens or bool(stopped.all()):
                break
            if bool(stopped.any()):  # finished rows leave the batch and the cache
                keep = (~stopped).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                active, chosen = active[keep], chosen[keep]
                attention, next_position = attention[keep], next_position[keep]
            attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
            out = self.model(
                input_ids=chosen[:, None],
                attention_mask=attention,
                position_ids=next_position,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits, next_position = out.logits[:, -1], next_position + 1
        return [Generation(t, lp, f) for t, lp, f in zip(tokens, logprobs, finish)]


def make_hf_engine(model, tokenizer, cfg: EngineConfig) -> HFEngine:
    """The `hf` entry of the engine registry (agents/engines/__init__.py)."""
    return HFEngine(model, tokenizer, batch_size=cfg.batch_size, share_prefix=cfg.share_prefix, dtype=cfg.dtype)
