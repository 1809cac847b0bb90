"""Fused, exact, chunked token objective over an nn.Linear lm_head: 3 head matmuls, no recompute.

When the training objective is token-separable,

    L = sum_t f_t(logp_t, H_t)        (f_t may use per-token tensors known beforehand: advantages,
                                       old log-probs, mask, aggregation weights such as
                                       1/num_action_tokens for token_mean),

its gradient can be formed chunk by chunk *during the forward pass*. With z_t = (W h_t + b) / T
(float32), p_t = softmax(z_t), y_t the target, logZ_t = logsumexp(z_t):

    logp_t = z_{t,y} - logZ_t                    H_t = logZ_t - sum_j p_{t,j} z_{t,j}
    g_lp_t = df_t/dlogp_t,  g_H_t = df_t/dH_t    (autograd over the chunk's [n]-sized tensors only)
    dL/dz_{t,j} = g_lp_t (1[j = y_t] - p_{t,j}) - g_H_t p_{t,j} (log p_{t,j} + H_t)
    dL/dh_t = (dL/dz_t / T) W        dL/dW += (dL/dz / T)^T h       dL/db += sum_t dL/dz_t / T

so each chunk costs one logits matmul and two gradient matmuls (naive autograd also does 3; the
recompute-in-backward path of training/logprobs.py does 4). Only one chunk's float32
[chunk x vocab] logits exist at a time. The stored gradients are handed back by a custom
autograd.Function, scaled by the upstream scalar gradient (so loss scaling / `loss * c` work).
The returned log-probs and entropies are detached (use them for metrics / controllers).
Our choice, not the paper's; values and gradients equal the unchunked autograd computation.

Not the learner's path: the learner uses training/logprobs.py (recompute in backward), which serves every
loss, including the ones that are not token-separable (GSPO's sequence ratio, Clip-Cov / KL-Cov's batch
covariance), and any lm_head. This is the `fused` variant of bench/logprob_memory.py, kept here as the
3-matmul reference that benchmark compares against; tests/test_bench_fused_loss.py checks it.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PerTokenFn = Callable[[Tensor, Tensor, dict[str, Tensor]], Tensor]


class _PrecomputedGrads(torch.autograd.Function):
    """value -> value; backward returns the gradients computed in the forward, times the upstream grad."""

    @staticmethod
    def forward(ctx, value, hidden, weight, bias, grads):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError(
                "fused_token_objective: backward can run only once per forward "
                "(its gradients were computed in the forward and are handed out once)"
            )
        grads, ctx.grads = ctx.grads, None
        out = [None if x is None else x.mul_(g.to(x.dtype)) for x in grads]  # in place: no extra copy
        return (None, *out, None)


def fused_token_objective(
    hidden: Tensor,
    lm_head: nn.Module,
    targets: Tensor,
    per_token_fn: PerTokenFn,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    extra: Optional[dict[str, Tensor]] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """hidden [N,H] or [B,T,H], targets [N] / [B,T] -> (objective scalar, logp, entropy) (the last two detached).

    per_token_fn(logp_chunk [n], entropy_chunk [n], extra_chunk) -> per-token objective [n]; it is
    summed over tokens, so put any aggregation weight (mask / n_tokens, ...) into it. `extra` holds
    per-token tensors shaped like `targets`, sliced to the same chunk. The objective has gradients
    to `hidden`, lm_head.weight and lm_head.bias (those that require grad); they are computed here,
    in the forward, so call .backward() on (a scalar multiple of) the objective once.
    """
    if type(lm_head) is not nn.Linear:
        raise TypeError(
            f"fused_token_objective needs a plain nn.Linear lm_head, got {type(lm_head).__name__}; "
            "use training.logprobs.token_logprobs_and_entropy for other heads (e.g. LoRA-wrapped)"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    shape, weight, bias = targets.shape, lm_head.weight, lm_head.bias
    if hidden.shape[:-1] != shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} does not match targets {tuple(shape)}")
    flat_h, flat_y = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    flat_x = {}
    for k, v in (extra or {}).items():
        if v.shape != shape:
            raise ValueError(f"extra[{k!r}] has shape {tuple(v.shape)}, expected the targets' {tuple(shape)}")
        flat_x[k] = v.reshape(-1)
    n, dt = flat_y.numel(), torch.promote_types(weight.dtype, torch.float32)
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    g_h = torch.zeros_like(flat_h) if need_h else None
    g_w = torch.zeros_like(weight, dtype=dt) if need_w else None  # one float32+ accumulator
    g_b = torch.zeros_like(bias, dtype=dt) if need_b else None
    logp, ent = flat_h.new_empty(n, dtype=dt), flat_h.new_empty(n, dtype=dt)
    total = flat_h.new_zeros((), dtype=dt)
    for s in range(0, n, chunk_size):
        h, y = flat_h[s : s + chunk_size].detach(), flat_y[s : s + chunk_size, None]
        with torch.no_grad():
            z = F.linear(h, weight, bias).to(dt).div_(temperature)  # matmul 1: logits
            lz = torch.logsumexp(z, -1, keepdim=True)
            z.sub_(lz)  # z <- log p
            p = z.exp()
            lp_c = z.gather(-1, y).squeeze(-1)
            h_c = -(p * z).sum(-1)  # -sum p log p
            logp[s : s + chunk_size], ent[s : s + chunk_size] = lp_c, h_c
        with torch.enable_grad():
            lp_v, h_v = lp_c.clone().requires_grad_(), h_c.clone().requires_grad_()
            obj = per_token_fn(lp_v, h_v, {k: v[s : s + chunk_size] for k, v in flat_x.items()}).sum()
            gl, gH = torch.autograd.grad(obj, (lp_v, h_v), allow_unused=True) if obj.requires_grad else (None, None)
        total += obj.detach().to(dt)
        if not (need_h or need_w or need_b):
            continue
        gl = torch.zeros_like(lp_c) if gl is None else gl.to(dt)
        with torch.no_grad():
            gz = z.add_(h_c[:, None]).mul_(gH[:, None].to(dt)) if gH is not None else z.zero_()
            gz.add_(gl[:, None]).mul_(p).neg_()  # -p (g_lp + g_H (log p + H))
            gz.scatter_add_(-1, y, gl[:, None]).div_(temperature)  # + g_lp 1[j = y]; chain 1/T
            del p
            with torch.autocast(flat_h.device.type, enabled=False):
                gz_w = gz.to(weight.dtype)
                if need_h:
                    g_h[s : s + chunk_size] = gz_w @ weight  # matmul 2: grad hidden
                if need_w:
                    g_w.addmm_(gz_w.t().to(dt), h.to(dt))  # matmul 3: grad weight
            if need_b:
                g_b.add_(gz.sum(0))
        del z, gz
    logp, ent = logp.reshape(shape), ent.reshape(shape)
    if not (need_h or need_w or need_b):
        return total, logp, ent
    grads = (
        None if g_h is None else g_h.reshape(hidden.shape),
        None if g_w is None else g_w.to(weight.dtype),
        None if g_b is None else g_b.to(bias.dtype),
    )
    value = _PrecomputedGrads.apply(total, hidden, weight, bias, grads)
    return value, logp, ent
