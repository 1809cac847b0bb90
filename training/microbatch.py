"""Micro-batches by token budget, and the data-parallel split of a minibatch over ranks.

A minibatch's rows go to ranks round-robin (rank r takes rows r::world_size); each rank cuts its
share into micro-batches of consecutive rows whose padded size,

    rows x (longest row of the micro-batch)       (right padding beyond it is trimmed),

stays within `micro_batch_tokens` (a single longer row is a micro-batch of its own; None = the
whole share in one pass). Every rank must run the same number of forwards and backwards (FSDP's
all-gathers and reduce-scatters are collectives), so shorter plans are padded with *dummy*
micro-batches: one real row cut to 2 tokens with its action mask zeroed, which adds exactly 0
to the loss and the gradients.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from . import distributed
from .batch import PolicyBatch


@dataclass
class MicroBatch:
    rows: Tensor         # [b] long: rows of the full batch
    width: int           # input tokens kept per row (the longest row's length)
    dummy: bool = False  # zero-weight stand-in (see module docstring)

    def take(self, batch: PolicyBatch) -> PolicyBatch:
        """These rows of `batch`, cut to `width` (action mask zeroed for a dummy)."""
        sub = batch.select(self.rows)
        w = self.width
        sub = PolicyBatch(sub.input_ids[:, :w], sub.attention_mask[:, :w], sub.action_mask[:, :w - 1],
                          sub.inference_logp[:, :w - 1], sub.rewards, sub.group_ids)
        if self.dummy:
            sub.action_mask = torch.zeros_like(sub.action_mask)
        return sub

    def cut(self, per_token: Optional[Tensor]) -> Optional[Tensor]:
        """A [B, T-1] tensor of the full batch (log-probs, entropies, ...) cut to this micro-batch."""
        return None if per_token is None else per_token[self.rows, :self.width - 1]


def split_by_tokens(rows: Tensor, lengths: Tensor, budget: Optional[int]) -> list[MicroBatch]:
    """Greedy, in order: consecutive rows while len(group) * max(length in group) <= budget."""
    out: list[MicroBatch] = []
    group: list[int] = []
    longest = 0
    for r in rows.tolist():
        n = int(lengths[r])
        if group and budget is not None and (len(group) + 1) * max(longest, n) > budget:
            out.append(MicroBatch(torch.tensor(group), max(longest, 2)))
            group, longest = [], 0
        group.append(r)
        longest = max(longest, n)
    if group:
        out.append(MicroBatch(torch.tensor(group), max(longest, 2)))
    return out


def plan(rows: Tensor, lengths: Tensor, budget: Optional[int]) -> list[MicroBatch]:
    """This rank's micro-batches of the minibatch `rows` (indices into the batch; `lengths` = each
    batch row's token count), padded with dummies to the largest count over ranks. Collective."""
    world, rank = distributed.world_size(), distributed.rank()
    mine = split_by_tokens(rows[rank::world], lengths, budget)
    if world == 1:
        return mine
    count = distributed.all_reduce_(torch.tensor([len(mine)]), op="max")
    return mine + [MicroBatch(rows[:1], 2, dummy=True) for _ in range(int(count) - len(mine))]
