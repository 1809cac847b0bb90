"""The learner: one policy-gradient update from a batch of trajectories (docs/algorithms.md).

    A_k  = advantage(R, groups)                      (per trajectory, broadcast to its action tokens)
    A'   = controller.shape(A, logp, H)              (REPO; identity otherwise)
    loss = policy_loss(logp, logp_old, A', mask)     (pg | ppo | dapo | gspo | cispo, by name;
                                                      Clip-Cov / KL-Cov modify its tokens)
A step whose loss or gradient is not finite is skipped (weights and optimizer state untouched) and
counted in `skipped_steps`.
then, once per iteration, the entropy controller moves zeta / eps_high toward the target entropy.
Every log-prob, ratio and entropy is float32; the model may compute in bf16/fp16 under autocast.

Each minibatch is one optimizer step; its rows may be cut into micro-batches by token budget
(`micro_batch_tokens`) and, under torchrun, shared out over ranks (training/microbatch.py, FSDP2
in training/distributed.py). Gradients are accumulated over the parts, and every part's loss is
divided by the *whole minibatch's* normalizers (losses.AggNorm; REPO-D's c from sums over the
whole minibatch), so the update equals the single-pass, single-process one up to float rounding.

What it computes, and no more (issue #14):
- logp_old and the pre-update entropy H of the first minibatch of the first epoch come from that
  minibatch's own forward (detached): before the first optimizer step the policy *is* the old one.
  A no-grad pre-pass runs only over the other rows, so the default (1 epoch x 1 minibatch) runs
  one forward per iteration, not two. (Only when train() and eval() forwards agree: no dropout.)
- the lm_head and log-softmax run only at action positions (loss mask 1); prompt and observation
  positions hold 0 and never reach a loss, an entropy statistic or a KL (all are masked).
`Learner.reuse_update_forward = False` / `head_on_actions = False` give the older path (tests, bench).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time

import torch

from . import distributed
from .advantages import compute_advantages, overlong_penalty
from .batch import PolicyBatch
from .config import LearnerConfig
from .entropy_control import make_controller
from .logprobs import model_logprobs
from .losses import AggNorm, LossInputs, compute_policy_loss
from .microbatch import MicroBatch, plan, resolve_budget
from .numerics import DTYPES, entropy_stats, make_grad_scaler, mismatch_stats


def train_forward_is_eval_forward(model: torch.nn.Module) -> bool:
    """True when train() and eval() forwards give the same numbers: no active dropout anywhere."""
    if any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        return False
    config = getattr(model, "config", None)
    return not float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0  # HF's functional attention dropout


class _PartMetrics:
    """One minibatch's loss metrics from its parts (micro-batches, ranks). loss and pg_loss are
    summed: with the minibatch's normalizers the parts add up to the minibatch's value. ratio_max
    is the max. The others are means weighted by the part's action tokens (exact for token means;
    for gspo's sequence-level clip fractions an approximation). Our choice, not the paper's."""

    SUMMED = ("loss", "pg_loss")

    def __init__(self):
        self.parts: list[tuple[dict[str, float], float, bool]] = []

    def add(self, metrics: dict[str, float], weight: float, dummy: bool) -> None:
        self.parts.append((metrics, weight, dummy))

    def result(self) -> dict[str, float]:
        if len(self.parts) == 1 and not distributed.active():
            return dict(self.parts[0][0])  # one pass: the values as computed
        keys = sorted(self.parts[0][0])
        real = [(m, w) for m, w, dummy in self.parts if not dummy]  # dummies (training/microbatch.py) count for nothing
        sums = [sum(m[k] if k in self.SUMMED else m[k] * w for m, w in real) for k in keys] + [sum(w for _, w in real)]
        sums = distributed.all_reduce_(torch.tensor(sums, dtype=torch.float64)).tolist()
        top = distributed.all_reduce_(
            torch.tensor([max((m["ratio_max"] for m, _ in real), default=-math.inf)], dtype=torch.float64), op="max"
        ).item()
        weight = sums[-1]
        out = {k: v if k in self.SUMMED else (v / weight if weight > 0 else 0.0) for k, v in zip(keys, sums)}
        out["ratio_max"] = top if top > -math.inf else 1.0
        return out


class Learner:
    reuse_update_forward = True  # logp_old / H of the first minibatch from its own update forward (module docstring)
    head_on_actions = True  # the lm_head only at action positions

    def __init__(self, model, cfg: LearnerConfig, *, temperature: float, max_len_norm: int, dtype: str = "fp32"):
        self.model, self.cfg = model, cfg
        self.temperature, self.max_len_norm = temperature, max_len_norm
        self.dtype = DTYPES[dtype]
        # bf16/fp16: the lm_head matmul in float32 unless told otherwise (docs/algorithms.md, "Numerics")
        self.head_fp32 = (dtype != "fp32") if cfg.fp32_lm_head is None else (cfg.fp32_lm_head and dtype != "fp32")
        # The reference is copied before sharding: FSDP modules cannot be deep-copied.
        self.reference = self._frozen_copy(model) if cfg.kl_coef > 0 else None
        if distributed.active():  # under torchrun: shard in place (the caller's `model` is now FSDP)
            distributed.shard_model(model, dtype)
            if self.reference is not None:
                distributed.shard_model(self.reference, dtype)
        # Under torchrun: the rank's device (FSDP placed the shards there); else wherever the caller put the model.
        self.device = distributed.device() if distributed.active() else next(model.parameters()).device
        self.micro_batch_tokens = resolve_budget(
            cfg.micro_batch_tokens, model, self.device
        )  # "auto": from model and machine
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scaler = make_grad_scaler(dtype, device=self.device.type, sharded=distributed.active())
        self.controller = make_controller(cfg)
        self.cumulative_entropy = 0.0

    @staticmethod
    def _frozen_copy(model):
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(self.model.parameters()).device.type, dtype=self.dtype)

    def _logprobs(self, model, batch: PolicyBatch, with_entropy: bool):
        positions = batch.action_mask > 0 if self.head_on_actions else None
        with self.autocast():
            return model_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                temperature=self.temperature,
                chunk_size=self.cfg.chunk_size,
                with_entropy=with_entropy,
                head_fp32=self.head_fp32,
                positions=positions,
                share_prefix=self.cfg.share_prefix,
            )

    def _prompt_groups(self, batch: PolicyBatch) -> torch.Tensor | None:
        """share_prefix: the rows' group ids, so that micro-batches keep a group's rows (its prompt) together."""
        return batch.group_ids.cpu() if self.cfg.share_prefix else None

    def _zeros(self, batch: PolicyBatch) -> torch.Tensor:
        """A [B, T-1] tensor for log-probs / entropies: float32 (float64 for a float64 model, as model_logprobs)."""
        dt = torch.promote_types(next(self.model.parameters()).dtype, torch.float32)
        return torch.zeros(batch.action_mask.shape, dtype=dt, device=self.device)

    @torch.no_grad()
    def _full_logprobs(
        self, model, batch: PolicyBatch, lengths: torch.Tensor, with_entropy: bool, rows: torch.Tensor | None = None
    ):
        """(logp, entropy | None) [B, T-1] of the batch's `rows` (all by default; the others stay 0), in
        micro-batches. Under torchrun each rank computes its rows into zeros and the ranks sum: every row
        comes from exactly one rank."""
        logp = self._zeros(batch)
        ent = self._zeros(batch) if with_entropy else None
        rows = torch.arange(len(batch)) if rows is None else rows
        for mb in plan(rows, lengths, self.micro_batch_tokens, self._prompt_groups(batch)):
            lp, en = self._logprobs(model, mb.take(batch), with_entropy)
            if not mb.dummy:
                logp[mb.rows, : mb.width - 1] = lp
                if with_entropy:
                    ent[mb.rows, : mb.width - 1] = en
        distributed.reshard(model)
        distributed.all_reduce_(logp)
        return logp, (distributed.all_reduce_(ent) if with_entropy else None)

    @torch.no_grad()
    def _shaping_stats(self, batch: PolicyBatch, mbs: list[MicroBatch], seq_adv: torch.Tensor) -> torch.Tensor:
        """The controller's minibatch sums (REPO-D) under the current policy: a no-grad pass over
        this rank's micro-batches, summed over ranks."""
        total = None
        for mb in mbs:
            sub = mb.take(batch)
            logp, ent = self._logprobs(self.model, sub, with_entropy=True)
            part = self.controller.shaping_stats(seq_adv[mb.rows, None] * sub.action_mask, logp, ent, sub.action_mask)
            total = part if total is None else total + part
        distributed.reshard(self.model)
        return distributed.all_reduce_(total)

    def advantages(self, batch: PolicyBatch) -> torch.Tensor:
        rewards = batch.rewards
        if self.cfg.overlong_buffer:
            # Our choice for multi-turn: length = whole episode length against the context budget.
            lengths = batch.attention_mask.sum(1)
            rewards = rewards + overlong_penalty(
                lengths, self.max_len_norm, self.cfg.overlong_buffer, self.cfg.overlong_penalty
            )
        return compute_advantages(self.cfg.advantage, rewards, batch.group_ids, self.cfg)

    def step(self, batch: PolicyBatch) -> dict[str, float]:
        """One iteration's update; returns its metrics. Under torchrun every rank calls it with the same batch."""
        t0 = time.perf_counter()
        cfg = self.cfg
        batch = batch.to(self.device)
        mask, lengths = batch.action_mask, batch.attention_mask.sum(1)
        seq_adv = self.advantages(batch)
        perm = distributed.broadcast_(torch.randperm(len(batch)))  # rank 0's order on every rank (the first epoch's)
        # The first minibatch's logp_old and H come from its update forward; a no-grad pass gives the other rows'.
        reuse = self.reuse_update_forward and train_forward_is_eval_forward(self.model)
        first = perm.chunk(cfg.minibatches)[0] if reuse else perm[:0]
        others = torch.ones(len(batch), dtype=torch.bool)
        others[first] = False
        self.model.eval()
        # pre_logp, entropy: the pre-update policy's (metrics, controller, logp_old unless taken from inference)
        pre_logp, entropy = self._full_logprobs(self.model, batch, lengths, True, rows=others.nonzero().squeeze(1))
        ref_logp = self._full_logprobs(self.reference, batch, lengths, False)[0] if self.reference is not None else None
        old_logp = batch.inference_logp if cfg.old_logprobs == "inference" else pre_logp
        self.model.train()
        sums: dict[str, float] = {}
        steps = 0
        for epoch in range(cfg.epochs):
            if epoch > 0:
                perm = distributed.broadcast_(torch.randperm(len(batch)))
            for i, rows in enumerate(perm.chunk(cfg.minibatches)):
                fill = (self._zeros(batch), self._zeros(batch)) if epoch == 0 and i == 0 and reuse else None
                step_metrics = self._minibatch_step(batch, rows, lengths, seq_adv, old_logp, entropy, ref_logp, fill)
                if fill is not None:  # this minibatch's rows, from every rank, into pre_logp (= old_logp) and entropy
                    for dst, src in zip((pre_logp, entropy), fill):
                        dst[rows] = distributed.all_reduce_(src)[rows]
                for key, value in step_metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                steps += 1
        self.model.eval()
        metrics = {**entropy_stats(entropy, pre_logp, mask), **mismatch_stats(pre_logp, batch.inference_logp, mask)}
        # The iteration's entropy H is the pre-update policy's on this batch (what the controller targets);
        # the loss's in-update entropy, when it computes one, is logged separately.
        skipped = sums.pop("skipped_steps", 0.0)  # a count, not a mean
        in_update = {("entropy_in_update" if k == "entropy" else k): v / steps for k, v in sums.items()}
        metrics = {**in_update, **metrics, "skipped_steps": skipped}
        if math.isfinite(metrics["entropy"]):  # a NaN entropy would poison H* and the running sum for good
            self.cumulative_entropy += metrics["entropy"]
            self.controller.update(metrics["entropy"])
        action_tokens = float(mask.sum())
        seconds = time.perf_counter() - t0
        metrics.update(self.controller.metrics())
        metrics.update(
            cumulative_entropy=self.cumulative_entropy,
            advantage_abs_mean=float(seq_adv.abs().mean()),
            time_learn=seconds,
            learn_tokens_per_s=float(batch.attention_mask.sum()) * cfg.epochs / seconds,
            action_tokens=action_tokens,
        )
        return metrics

    def _minibatch_step(
        self, batch, rows, lengths, seq_adv, old_logp, entropy, ref_logp, fill=None
    ) -> dict[str, float]:
        """One optimizer step on the minibatch `rows`: this rank's micro-batches, gradients accumulated.
        fill: (logp, H) [B, T-1] zeros; the forward's detached values are written there and, as the
        policy has not moved yet, serve as these rows' logp_old and H (recompute)."""
        cfg, ctl = self.cfg, self.controller
        mbs = plan(rows, lengths, self.micro_batch_tokens, self._prompt_groups(batch))
        norm = AggNorm.of(batch.action_mask[rows])
        overrides = ctl.loss_overrides()  # what the controller moves (ADAPO: eps_high); fixed for this step
        needs_entropy_grad = ctl.needs_entropy or cfg.entropy_coef != 0
        # REPO-D's c is a minibatch statistic: over several parts, from a no-grad pass first.
        stats = self._shaping_stats(batch, mbs, seq_adv) if ctl.minibatch_stats and len(mbs) > 1 else None
        self.optimizer.zero_grad(set_to_none=True)
        parts = _PartMetrics()
        for mb in mbs:
            sub = mb.take(batch)
            logp, mb_entropy = self._logprobs(self.model, sub, with_entropy=needs_entropy_grad or fill is not None)
            old = mb.cut(old_logp)
            if fill is not None:
                if not mb.dummy:
                    fill[0][mb.rows, : mb.width - 1] = logp.detach()
                    fill[1][mb.rows, : mb.width - 1] = mb_entropy.detach()
                if self.cfg.old_logprobs == "recompute":
                    old = logp.detach()
            ent = mb_entropy.detach() if mb_entropy is not None else mb.cut(entropy)
            mb_entropy = mb_entropy if needs_entropy_grad else None  # the loss sees H only when it needs its gradient
            adv_tok = seq_adv[mb.rows, None] * sub.action_mask
            if ctl.minibatch_stats and len(mbs) == 1 and distributed.active():  # one part per rank: sum the ranks'
                stats = distributed.all_reduce_(ctl.shaping_stats(adv_tok, logp.detach(), ent, sub.action_mask))
            adv_tok = ctl.shape_advantages(adv_tok, logp.detach(), ent, sub.action_mask, stats=stats)
            inputs = LossInputs(
                logp=logp,
                old_logp=old,
                advantages=adv_tok,
                mask=sub.action_mask,
                entropy=mb_entropy,
                ref_logp=mb.cut(ref_logp),
                inference_logp=sub.inference_logp,
            )
            loss, loss_metrics = compute_policy_loss(
                cfg, inputs, overrides=overrides, max_len_norm=self.max_len_norm, norm=norm, modifier=ctl.token_modifier
            )
            self.scaler.scale(loss).backward()
            parts.add(loss_metrics, float(sub.action_mask.sum()), mb.dummy)
        self.scaler.unscale_(self.optimizer)
        # Under FSDP the gradients are DTensors: clip_grad_norm_ computes the global norm over all shards.
        grad_norm = distributed.local_float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm))
        result = parts.result()  # under torchrun: summed over ranks, so every rank takes the same decision
        # A non-finite loss or gradient (a NaN reward, overflowing logits) skips the step: the weights and the
        # optimizer state stay as they were, so nothing non-finite can reach a checkpoint; it is counted.
        finite = math.isfinite(grad_norm) and math.isfinite(result["loss"])
        if finite:
            self.scaler.step(self.optimizer)
        else:
            self.optimizer.zero_grad(set_to_none=True)
        self.scaler.update()  # fp16: a skipped step lowers the loss scale, as GradScaler's own inf check does
        return {**result, "grad_norm": grad_norm, "skipped_steps": float(not finite)}

    def state_dict(self) -> dict:
        """Collective under torchrun (the optimizer state is gathered whole, keyed by parameter name)."""
        return {
            "optimizer": distributed.full_optimizer_state(self.model, self.optimizer),
            "scaler": self.scaler.state_dict(),
            "controller": self.controller.state_dict(),
            "cumulative_entropy": self.cumulative_entropy,
        }

    def load_state_dict(self, state: dict) -> None:
        """From a checkpoint of any world size; every rank passes the full state."""
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.controller.load_state_dict(state["controller"])
        self.cumulative_entropy = state["cumulative_entropy"]
