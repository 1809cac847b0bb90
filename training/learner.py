"""The learner: one policy-gradient update from a batch of trajectories (ALGORITHMS.md).

    A_k  = advantage(R, groups)                      (per trajectory, broadcast to its action tokens)
    A'   = controller.shape(A, logp, H)              (REPO; identity otherwise)
    loss = policy_loss(logp, logp_old, A', mask)     (pg | ppo | dapo | gspo, by name)
then, once per iteration, the entropy controller moves zeta / eps_high toward the target entropy.
Every log-prob, ratio and entropy is float32; the model may compute in bf16/fp16 under autocast.
"""
from __future__ import annotations

import contextlib
import copy
import time

import torch

from .advantages import compute_advantages, overlong_penalty
from .batch import PolicyBatch
from .config import LearnerConfig
from .entropy_control import make_controller
from .logprobs import model_logprobs
from .losses import LossInputs, compute_policy_loss
from .numerics import DTYPES, entropy_stats, make_grad_scaler, mismatch_stats


class Learner:
    def __init__(self, model, cfg: LearnerConfig, *, temperature: float, max_len_norm: int, dtype: str = "fp32"):
        self.model, self.cfg = model, cfg
        self.temperature, self.max_len_norm = temperature, max_len_norm
        self.dtype = DTYPES[dtype]
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scaler = make_grad_scaler(dtype)
        self.controller = make_controller(cfg)
        self.reference = self._frozen_copy(model) if cfg.kl_coef > 0 else None
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
        with self.autocast():
            return model_logprobs(model, batch.input_ids, batch.attention_mask, temperature=self.temperature,
                                  chunk_size=self.cfg.chunk_size, with_entropy=with_entropy)

    def advantages(self, batch: PolicyBatch) -> torch.Tensor:
        rewards = batch.rewards
        if self.cfg.overlong_buffer:
            # Our choice for multi-turn: length = whole episode length against the context budget.
            lengths = batch.attention_mask.sum(1)
            rewards = rewards + overlong_penalty(lengths, self.max_len_norm, self.cfg.overlong_buffer, self.cfg.overlong_penalty)
        return compute_advantages(self.cfg.advantage, rewards, batch.group_ids, self.cfg)

    def step(self, batch: PolicyBatch) -> dict[str, float]:
        """One iteration's update; returns its metrics."""
        t0 = time.perf_counter()
        cfg, mask = self.cfg, batch.action_mask
        seq_adv = self.advantages(batch)
        with torch.no_grad():
            self.model.eval()
            old_logp, entropy = self._logprobs(self.model, batch, with_entropy=True)
            ref_logp = self._logprobs(self.reference, batch, with_entropy=False)[0] if self.reference is not None else None
        metrics = {**entropy_stats(entropy, old_logp, mask), **mismatch_stats(old_logp, batch.inference_logp, mask)}
        if cfg.old_logprobs == "inference":
            old_logp = batch.inference_logp
        needs_entropy_grad = self.controller.needs_entropy or cfg.entropy_coef != 0
        self.model.train()
        sums: dict[str, float] = {}
        steps = 0
        for _ in range(cfg.epochs):
            for rows in torch.randperm(len(batch)).chunk(cfg.minibatches):
                mb = batch.select(rows)
                logp, mb_entropy = self._logprobs(self.model, mb, with_entropy=needs_entropy_grad)
                adv_tok = seq_adv[rows, None] * mb.action_mask
                adv_tok = self.controller.shape_advantages(
                    adv_tok, logp.detach(), mb_entropy.detach() if mb_entropy is not None else entropy[rows], mb.action_mask)
                inputs = LossInputs(logp=logp, old_logp=old_logp[rows], advantages=adv_tok, mask=mb.action_mask,
                                    entropy=mb_entropy, ref_logp=None if ref_logp is None else ref_logp[rows],
                                    inference_logp=mb.inference_logp)
                loss, loss_metrics = compute_policy_loss(cfg, inputs, eps_high=self.controller.eps_high(cfg.eps_high),
                                                         max_len_norm=self.max_len_norm)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                for key, value in {**loss_metrics, "loss": loss.item(), "grad_norm": float(grad_norm)}.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                steps += 1
        self.model.eval()
        # The iteration's entropy H is the pre-update policy's on this batch (what the controller targets);
        # the loss's in-update entropy, when it computes one, is logged separately.
        in_update = {("entropy_in_update" if k == "entropy" else k): v / steps for k, v in sums.items()}
        metrics = {**in_update, **metrics}
        self.cumulative_entropy += metrics["entropy"]
        self.controller.update(metrics["entropy"])
        action_tokens = float(mask.sum())
        seconds = time.perf_counter() - t0
        metrics.update(self.controller.metrics())
        metrics.update(cumulative_entropy=self.cumulative_entropy, advantage_abs_mean=float(seq_adv.abs().mean()),
                       time_learn=seconds, learn_tokens_per_s=float(batch.attention_mask.sum()) * cfg.epochs / seconds,
                       action_tokens=action_tokens)
        return metrics

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "controller": self.controller.state_dict(), "cumulative_entropy": self.cumulative_entropy}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.controller.load_state_dict(state["controller"])
        self.cumulative_entropy = state["cumulative_entropy"]
