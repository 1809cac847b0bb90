"""Float32 token log-probs and exact entropy, chunked over the sequence (docs/algorithms.md, "Numerics").

For each token, with z = lm_head(h) / temperature upcast to float32:
    log p(y)  = z_y - logsumexp(z)
    H         = logsumexp(z) - sum_j softmax(z)_j * z_j        (= -sum_j p_j log p_j)
The flattened tokens are cut into chunks of `chunk_size` and checkpointed per chunk, so neither
the forward nor the backward ever holds the float32 [tokens x vocab] logits whole: only one
chunk's logits exist at a time, recomputed for that chunk during backward. Gradients equal the
unchunked computation. Two implementations of the same thing:
- any head module: each chunk runs under `torch.utils.checkpoint` (non-reentrant);
- a plain nn.Linear head (the usual lm_head): `_FusedLinearLogpEntropy`, the same recompute
  written by hand so the [vocab x hidden] weight gradient is accumulated in one buffer instead of
  being allocated and summed once per chunk (which costs ~2 weight-sizes of memory and much time;
  see bench/logprob_memory.py). Our choice, not the paper's.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from . import distributed
from .model_parts import causal_lm_parts
from .shared_prefix import plan_shared_prefix, shared_prefix_hidden


def _linear(h: Tensor, weight: Tensor, bias: Optional[Tensor], fp32: bool) -> Tensor:
    """The head matmul; fp32: in float32 whatever the autocast dtype (bf16 logits carry ~3 significant
    digits, rounding log-probs by ~1e-2 before the float32 log-softmax)."""
    if not fp32:
        return F.linear(h, weight, bias)
    with torch.autocast(h.device.type, enabled=False):
        up = lambda t: None if t is None else t.to(torch.promote_types(t.dtype, torch.float32))  # noqa: E731
        return F.linear(up(h), up(weight), up(bias))


def _chunk_logp_entropy(
    lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float, with_entropy: bool, head_fp32: bool = False
) -> tuple[Tensor, Optional[Tensor]]:
    """One chunk: hidden [n,H], targets [n] -> logp [n] f32, entropy [n] f32 | None.
    head_fp32: autocast off and hidden in the head's parameter dtype (float32 master weights: an fp32 head)."""
    if head_fp32:
        with torch.autocast(hidden.device.type, enabled=False):
            logits = lm_head(hidden.to(next(lm_head.parameters()).dtype))
    else:
        logits = lm_head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # 16-bit -> f32 (f64 stays)
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
    if not with_entropy:
        return logp, None
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


class _FusedLinearLogpEntropy(torch.autograd.Function):
    """Fast path for a plain nn.Linear head: the same per-chunk recomputation as checkpointing,
    written out by hand so that backward writes each chunk's weight gradient into ONE buffer
    (addmm_) instead of allocating and summing a [vocab x hidden] gradient per chunk, and reuses
    the recomputed logits buffer in place. With g_lp, g_H the upstream gradients and z the
    (temperature-scaled) logits of a token, p = softmax(z):
        d logp / d z_j = 1[j = y] - p_j
        d H    / d z_j = -p_j (log p_j + H) = -p_j (z_j - logsumexp(z) + H)
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, with_entropy, head_fp32):
        n, dt = hidden.shape[0], torch.promote_types(weight.dtype, torch.float32)
        logp, logz, ent = (hidden.new_empty(n, dtype=dt) for _ in range(3))
        for s in range(0, n, chunk_size):
            z = _linear(hidden[s : s + chunk_size], weight, bias, head_fp32).to(dt).div_(temperature)
            lz = torch.logsumexp(z, -1)
            logz[s : s + chunk_size] = lz
            logp[s : s + chunk_size] = z.gather(-1, targets[s : s + chunk_size, None]).squeeze(-1) - lz
            if with_entropy:
                ent[s : s + chunk_size] = lz - (torch.softmax(z, -1) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, logz, ent)
        ctx.set_materialize_grads(False)  # an unused output (the entropy, for metrics only) gets None: no work
        ctx.temperature, ctx.chunk_size, ctx.with_entropy, ctx.head_fp32 = (
            temperature,
            chunk_size,
            with_entropy,
            head_fp32,
        )
        return (logp, ent) if with_entropy else (logp, None)

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        hidden, weight, bias, targets, logz, ent = ctx.saved_tensors
        n, c, temp = hidden.shape[0], ctx.chunk_size, ctx.temperature
        dt = logz.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=dt) if need_w else None  # one accumulator, float32+
        g_b = torch.zeros_like(bias, dtype=dt) if need_b else None
        g_lp = torch.zeros_like(logz) if g_lp is None else g_lp.to(dt)
        use_ent = ctx.with_entropy and g_ent is not None
        for s in range(0, n, c):
            h, lz = hidden[s : s + c], logz[s : s + c, None]
            z = _linear(h, weight, bias, ctx.head_fp32).to(dt).div_(temp)  # recompute (checkpointing)
            p = torch.exp(z - lz)
            gz = z.sub_(lz).add_(ent[s : s + c, None]).mul_(g_ent[s : s + c, None].to(dt)) if use_ent else z.zero_()
            gz.add_(g_lp[s : s + c, None]).mul_(p).neg_()  # -p (g_lp + g_H (log p + H))
            gz.scatter_add_(-1, targets[s : s + c, None], g_lp[s : s + c, None])  # + g_lp 1[j = y]
            del p
            gz.div_(temp)
            w = weight.to(dt) if ctx.head_fp32 else weight
            gz16 = gz.to(w.dtype)
            if need_h:
                g_h[s : s + c] = gz16 @ w
            if need_w:
                g_w.addmm_(gz16.t().to(dt), h.to(dt))
            if need_b:
                g_b.add_(gz.sum(0))
        g_w = g_w.to(weight.dtype) if need_w else None
        g_b = g_b.to(bias.dtype) if need_b else None
        return g_h, g_w, g_b, None, None, None, None, None


def token_logprobs_and_entropy(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = True,
    head_fp32: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """hidden [B,T,H] (any dtype), targets [B,T] long -> (log p(targets) [B,T], H [B,T] | None), float32
    (float64 if the head computes in float64, for tests). head_fp32: the head matmul itself runs in
    float32 even under bf16/fp16 autocast (learner.fp32_lm_head).

    Gradients flow into `hidden` and the lm_head parameters. A plain nn.Linear head takes the
    fused path (_FusedLinearLogpEntropy); any other head module (e.g. LoRA-wrapped) runs each
    chunk under torch.utils.checkpoint. Both recompute one chunk's logits at a time in backward.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = targets.reshape(-1)
    if flat_y.numel() == 0:
        empty = flat_h.new_zeros(shape, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    if type(lm_head) is nn.Linear:
        lp, ent = _FusedLinearLogpEntropy.apply(
            flat_h, lm_head.weight, lm_head.bias, flat_y, float(temperature), chunk_size, with_entropy, head_fp32
        )
        return lp.reshape(shape), (ent.reshape(shape) if with_entropy else None)
    need_ckpt = torch.is_grad_enabled() and (flat_h.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    logps, ents = [], []
    for start in range(0, flat_y.numel(), chunk_size):
        h, y = flat_h[start : start + chunk_size], flat_y[start : start + chunk_size]
        if need_ckpt:
            lp, ent = checkpoint(
                _chunk_logp_entropy, lm_head, h, y, temperature, with_entropy, head_fp32, use_reentrant=False
            )
        else:
            lp, ent = _chunk_logp_entropy(lm_head, h, y, temperature, with_entropy, head_fp32)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).reshape(shape)
    entropy = torch.cat(ents).reshape(shape) if with_entropy else None
    return logp, entropy


def _hidden_of(out) -> Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _last_hidden(model: nn.Module, backbone: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor]) -> Tensor:
    """The backbone's last hidden states [B,T,H].

    Under FSDP2 (training/distributed.py) it is the root module's forward hooks that all-gather the
    root's parameters (embeddings, final norm, lm_head) and schedule their gradient reduction;
    calling the backbone directly would skip them. So a sharded model runs its own forward, with
    logits for the last position only (kept by index, a contiguous row for the head: see
    HFEngine._prefill), and the backbone's output is captured on the way. FSDP2 keeps the root unsharded after forward (backward needs it at
    once), so the chunked head below then reads the full lm_head weight, and its gradient lands
    in the unsharded parameter that FSDP reduces after backward.
    """
    if not distributed.is_sharded(model):
        return _hidden_of(backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False))
    captured: list[Tensor] = []
    handle = backbone.register_forward_hook(lambda _m, _args, out: captured.append(_hidden_of(out)))
    try:
        last = torch.tensor([input_ids.shape[1] - 1], device=input_ids.device)
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=last)
    finally:
        handle.remove()
    return captured[0]


def model_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = True,
    head_fp32: bool = False,
    positions: Optional[Tensor] = None,
    share_prefix: bool = False,
) -> tuple[Tensor, Optional[Tensor]]:
    """Causal LM -> (logp [B,T-1], entropy [B,T-1] | None), float32 (head_fp32: see token_logprobs_and_entropy).

    Position t holds log p(input_ids[t+1] | input_ids[:t+1]) and the entropy of that
    next-token distribution, with logits divided by `temperature` (same as the sampler).
    positions: bool [B,T-1]; the lm_head runs only there (the action tokens: prompt and observation
    positions never reach a loss, and the [tokens x vocab] head is most of the cost for a large vocab
    after long prompts), and every other position holds exactly 0.
    share_prefix: rows starting with the same prompt run it once (training/shared_prefix.py; needs `positions`).
    """
    backbone, head = causal_lm_parts(model)
    plan = plan_shared_prefix(input_ids, positions) if share_prefix and positions is not None else None
    if plan is not None and not distributed.is_sharded(model):
        assert attention_mask is not None, "a shared prefix needs the attention mask of the right-padded rows"
        hidden = shared_prefix_hidden(backbone, input_ids, attention_mask, plan)[:, :-1]
    else:
        hidden = _last_hidden(model, backbone, input_ids, attention_mask)[:, :-1]
    targets = input_ids[:, 1:]
    kw = dict(temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy, head_fp32=head_fp32)
    # Nothing selected (a zero-weight dummy micro-batch): all positions, so the backward still reaches
    # every parameter (FSDP's collectives run in every rank's backward).
    if positions is None or not bool(positions.any()):
        return token_logprobs_and_entropy(hidden, head, targets, **kw)
    lp, ent = token_logprobs_and_entropy(hidden[positions], head, targets[positions], **kw)
    full = lambda x: None if x is None else x.new_zeros(positions.shape).index_put((positions,), x)  # noqa: E731
    return full(lp), full(ent)
