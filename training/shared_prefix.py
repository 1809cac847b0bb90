"""Shared-prefix forward: rows that start with the same tokens (a group's prompt) run those tokens once.

A GRPO/RLOO group is K samples of one task: K rows with the same prompt. A plain forward runs the prompt
K times. With `learner.share_prefix`, the rows of a micro-batch are split at P = the first action token of
the earliest-acting row (so every token before P is prompt in every row), the distinct prefixes
ids[:, :P] run once each, and every row continues from its prefix's key/value cache:

    h[:P], (K, V)[:P] = backbone(prefix_g)                   once per distinct prefix g, with grad
    h[P:]             = backbone(ids_r[P:] | (K, V)[:P] of g) per row r of g, positions P..T-1
    h_r               = concat(h[:P] of g, h[P:] of r)

The per-row copies of h[:P] and (K, V) are `index_select`s, whose backward sums the rows' gradients into
their group's prefix: d loss / d theta is that of the full forward, up to float rounding (the prefix's
matmuls run on fewer rows and the suffix attends through the cache, so sums are ordered differently; the
tests bound the difference). Saves (rows - groups) x P tokens of forward and backward per micro-batch.
Our choice, not the paper's; off by default, since it is not bit-exact with the plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn


@dataclass
class PrefixPlan:
    length: int  # P: tokens [0, P) are shared
    heads: Tensor  # [G] long: one row per distinct prefix (its first occurrence)
    groups: Tensor  # [b] long: each row's prefix, an index into `heads`


def plan_shared_prefix(input_ids: Tensor, action_mask: Tensor) -> Optional[PrefixPlan]:
    """The plan for a micro-batch (input_ids [b, T], action_mask [b, T-1]), or None when no prefix is shared.

    P = min over rows of the first action token's index (action_mask[t] = 1 marks token t+1), so the
    hidden state at P-1, which predicts the earliest action token, comes from the prefix forward too.
    """
    acting = action_mask > 0
    if input_ids.shape[0] < 2 or not bool(acting.any(1).all()):
        return None  # one row, or a row with no action token (a dummy part): nothing to gain or to bound P by
    length = int(acting.float().argmax(1).min()) + 1
    prefixes, groups = torch.unique(input_ids[:, :length], dim=0, return_inverse=True)
    if len(prefixes) == input_ids.shape[0]:
        return None
    rows = torch.arange(len(groups), device=groups.device)
    heads = torch.full((len(prefixes),), len(groups), dtype=torch.long, device=groups.device)
    heads = heads.scatter_reduce(0, groups, rows, reduce="amin")  # first row of each prefix
    return PrefixPlan(length, heads, groups)


def _hidden(out) -> Tensor:
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def shared_prefix_hidden(backbone: nn.Module, input_ids: Tensor, attention_mask: Tensor, plan: PrefixPlan) -> Tensor:
    """The backbone's last hidden states [b, T, H], each distinct prefix run once (module docstring).
    Rows are right-padded (training/batch.py), so position ids continue at P in every row."""
    p = plan.length
    head = backbone(input_ids=input_ids[plan.heads, :p], use_cache=True)
    cache = head.past_key_values
    cache.batch_select_indices(plan.groups)  # every row's copy of its prefix's keys and values (autograd: a gather)
    width = input_ids.shape[1]
    positions = torch.arange(p, width, device=input_ids.device).expand(input_ids.shape[0], -1)
    rest = backbone(
        input_ids=input_ids[:, p:],
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=positions,
        use_cache=True,
    )
    return torch.cat([_hidden(head).index_select(0, plan.groups), _hidden(rest)], dim=1)
