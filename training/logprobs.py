"""Float32 token log-probs and exact entropy, chunked over the sequence (ALGORITHMS.md, "Numerics").

For each token, with z = lm_head(h) / temperature upcast to float32:
    log p(y)  = z_y - logsumexp(z)
    H         = logsumexp(z) - sum_j softmax(z)_j * z_j        (= -sum_j p_j log p_j)
The flattened tokens are cut into chunks of `chunk_size`; each chunk runs under
`torch.utils.checkpoint` (non-reentrant), so neither the forward nor the backward ever holds
the float32 [tokens x vocab] logits whole: only one chunk's logits exist at a time, and they
are recomputed for that chunk during backward. Gradients equal the unchunked computation.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _chunk_logp_entropy(lm_head: nn.Module, hidden: Tensor, targets: Tensor, temperature: float,
                        with_entropy: bool) -> tuple[Tensor, Optional[Tensor]]:
    """One chunk: hidden [n,H], targets [n] -> logp [n] f32, entropy [n] f32 | None."""
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


def token_logprobs_and_entropy(hidden: Tensor, lm_head: nn.Module, targets: Tensor, *,
                               temperature: float = 1.0, chunk_size: int = 256,
                               with_entropy: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """hidden [B,T,H] (any dtype), targets [B,T] long -> (log p(targets) [B,T], H [B,T] | None), float32
    (float64 if the head computes in float64, for tests).

    Gradients flow into `hidden` and the lm_head parameters (checkpointed per chunk).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape = targets.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_y = targets.reshape(-1)
    need_ckpt = torch.is_grad_enabled() and (flat_h.requires_grad or any(p.requires_grad for p in lm_head.parameters()))
    logps, ents = [], []
    for start in range(0, flat_y.numel(), chunk_size):
        h, y = flat_h[start:start + chunk_size], flat_y[start:start + chunk_size]
        if need_ckpt:
            lp, ent = checkpoint(_chunk_logp_entropy, lm_head, h, y, temperature, with_entropy, use_reentrant=False)
        else:
            lp, ent = _chunk_logp_entropy(lm_head, h, y, temperature, with_entropy)
        logps.append(lp)
        ents.append(ent)
    if not logps:  # zero tokens
        empty = flat_h.new_zeros(shape, dtype=torch.float32)
        return empty, (empty.clone() if with_entropy else None)
    logp = torch.cat(logps).reshape(shape)
    entropy = torch.cat(ents).reshape(shape) if with_entropy else None
    return logp, entropy


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(decoder backbone returning last hidden states, lm_head) of a HF causal LM, peft-wrapped or not.

    peft: `get_base_model()` unwraps the PeftModel (LoRA layers stay injected in the modules).
    transformers: `get_decoder()` finds the backbone (`model.model` for Llama/Qwen-style LMs);
    if it returns the LM itself we fall back to `base_model_prefix` / `.model`.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = base.get_decoder() if hasattr(base, "get_decoder") else None
    if backbone is None or backbone is base:
        backbone = getattr(base, getattr(base, "base_model_prefix", "model"), None)
        backbone = getattr(base, "model", None) if backbone is None or backbone is base else backbone
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else getattr(base, "lm_head", None)
    if backbone is None or head is None:
        raise ValueError(f"cannot find decoder backbone and lm_head in {type(base).__name__}")
    cfg = getattr(base, "config", None)
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise ValueError(f"{type(base).__name__} sets config.{attr}; the chunked head does not apply it")
    return backbone, head


def model_logprobs(model: nn.Module, input_ids: Tensor, attention_mask: Optional[Tensor] = None, *,
                   temperature: float = 1.0, chunk_size: int = 256,
                   with_entropy: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Causal LM -> (logp [B,T-1], entropy [B,T-1] | None), float32.

    Position t holds log p(input_ids[t+1] | input_ids[:t+1]) and the entropy of that
    next-token distribution, with logits divided by `temperature` (same as the sampler).
    """
    backbone, head = causal_lm_parts(model)
    out = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return token_logprobs_and_entropy(hidden[:, :-1], head, input_ids[:, 1:], temperature=temperature,
                                      chunk_size=chunk_size, with_entropy=with_entropy)
