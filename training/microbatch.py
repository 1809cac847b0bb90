"""Micro-batches by token budget, and the data-parallel split of a minibatch over ranks.

A minibatch's rows go to ranks round-robin (rank r takes rows r::world_size); each rank cuts its
share into micro-batches of consecutive rows whose padded size,

    rows x (longest row of the micro-batch)       (right padding beyond it is trimmed),

stays within `micro_batch_tokens` (a single longer row is a micro-batch of its own; None = the
whole share in one pass). Every rank must run the same number of forwards and backwards (FSDP's
all-gathers and reduce-scatters are collectives), so shorter plans are padded with *dummy*
micro-batches: one real row cut to 2 tokens with its action mask zeroed, which adds exactly 0
to the loss and the gradients.

`micro_batch_tokens: auto` (the default) picks the budget from the model and the machine, so that
peak memory stays near weights + optimizer state + one micro-batch's activations:

    budget = (total memory of the device / 16) / (activation bytes per token)

with a Llama/Qwen-style decoder keeping, per layer and token, about 8 hidden-sized, 4 kv-sized and
5 intermediate-sized float32 tensors for backward (norm inputs, q/k/v, attention output, gate, up,
act(gate), their product, ...). Total memory, not free memory: the plan (and so the float rounding
of a run) must not depend on what else runs, or `resume` would not be bit-exact. A small model's
budget exceeds any batch it trains on, so it keeps one pass. Our choice, measured in
bench/results/smollm2_cost.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from . import distributed
from .batch import PolicyBatch


@dataclass
class MicroBatch:
    rows: Tensor  # [b] long: rows of the full batch
    width: int  # input tokens kept per row (the longest row's length)
    dummy: bool = False  # zero-weight stand-in (see module docstring)

    def take(self, batch: PolicyBatch) -> PolicyBatch:
        """These rows of `batch`, cut to `width` (action mask zeroed for a dummy)."""
        sub = batch.select(self.rows)
        w = self.width
        sub = PolicyBatch(
            sub.input_ids[:, :w],
            sub.attention_mask[:, :w],
            sub.action_mask[:, : w - 1],
            sub.inference_logp[:, : w - 1],
            sub.rewards,
            sub.group_ids,
        )
        if self.dummy:
            sub.action_mask = torch.zeros_like(sub.action_mask)
        return sub

    def cut(self, per_token: Optional[Tensor]) -> Optional[Tensor]:
        """A [B, T-1] tensor of the full batch (log-probs, entropies, ...) cut to this micro-batch."""
        return None if per_token is None else per_token[self.rows, : self.width - 1]


MEMORY_FRACTION = 16  # a micro-batch's activations may take 1/16 of the device's memory


def activation_bytes_per_token(config) -> int:
    """Float32 activations one token keeps for backward (module docstring); a rough, generous estimate."""
    hidden = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    inter = getattr(config, "intermediate_size", None) or 4 * hidden
    return 4 * config.num_hidden_layers * (8 * hidden + 4 * kv * head_dim + 5 * inter)


def device_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def resolve_budget(setting: Union[int, str, None], model, device: torch.device) -> Optional[int]:
    """`micro_batch_tokens` as configured: an int or None as given; "auto" from the model and the machine."""
    if not isinstance(setting, str):
        return setting
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        return None  # not a decoder we can size: one pass, as before
    return max(256, device_memory_bytes(device) // MEMORY_FRACTION // activation_bytes_per_token(config))


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


def split_by_groups(rows: Tensor, lengths: Tensor, budget: Optional[int], groups: Tensor) -> list[MicroBatch]:
    """As split_by_tokens, with the rows ordered by group (stable) and whole groups kept in one micro-batch
    where they fit, so that rows sharing a prompt share it in one forward (learner.share_prefix). A group
    longer than the budget alone is cut by split_by_tokens."""
    rows = rows[torch.sort(groups[rows], stable=True).indices]
    units = torch.unique_consecutive(groups[rows], return_counts=True)[1].tolist()
    out: list[MicroBatch] = []
    group: list[int] = []
    longest = 0
    for unit in rows.split(units):
        n = int(lengths[unit].max())
        if group and budget is not None and (len(group) + len(unit)) * max(longest, n) > budget:
            out.append(MicroBatch(torch.tensor(group), max(longest, 2)))
            group, longest = [], 0
        if budget is not None and len(unit) * n > budget:
            out.extend(split_by_tokens(unit, lengths, budget))
            continue
        group.extend(unit.tolist())
        longest = max(longest, n)
    if group:
        out.append(MicroBatch(torch.tensor(group), max(longest, 2)))
    return out


def plan(rows: Tensor, lengths: Tensor, budget: Optional[int], groups: Optional[Tensor] = None) -> list[MicroBatch]:
    """This rank's micro-batches of the minibatch `rows` (indices into the batch; `lengths` = each
    batch row's token count), padded with dummies to the largest count over ranks. Collective.
    groups: each batch row's group id; given, a group's rows stay together (split_by_groups)."""
    world, rank = distributed.world_size(), distributed.rank()
    if groups is not None and world == 1:
        return split_by_groups(rows, lengths, budget, groups)
    mine = split_by_tokens(rows[rank::world], lengths, budget)
    if world == 1:
        return mine
    count = distributed.all_reduce_(torch.tensor([len(mine)]), op="max")
    return mine + [MicroBatch(rows[:1], 2, dummy=True) for _ in range(int(count) - len(mine))]
