"""The default micro-batch budget (issue #14): sized from the model and the machine, never from what
else runs; a small model keeps one pass (so its numbers do not change)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from eprl.training import microbatch
from eprl.training.config import ConfigError, LearnerConfig, load_run_config
from eprl.training.learner import Learner

GiB = 2**30
SMOLLM2 = LlamaConfig(
    hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536
)


class _Model:  # only what resolve_budget reads
    def __init__(self, config):
        self.config = config


def test_activation_bytes_per_token_counts_hidden_kv_and_intermediate():
    # 4 bytes x 30 layers x (8 x 576 + 4 x 3 x 64 + 5 x 1536) = 1,566,720 bytes
    assert microbatch.activation_bytes_per_token(SMOLLM2) == 4 * 30 * (8 * 576 + 4 * 192 + 5 * 1536) == 1_566_720


def test_auto_budget_from_total_memory(monkeypatch):
    monkeypatch.setattr(microbatch, "device_memory_bytes", lambda device: 24 * GiB)
    cpu = torch.device("cpu")
    assert microbatch.resolve_budget("auto", _Model(SMOLLM2), cpu) == 24 * GiB // 16 // 1_566_720 == 1028
    # a 64-episode batch of ~200-token rows is then cut into micro-batches of ~5 rows
    assert len(microbatch.split_by_tokens(torch.arange(64), torch.full((64,), 200), 1028)) == 13
    monkeypatch.setattr(microbatch, "device_memory_bytes", lambda device: 1 * GiB)
    assert microbatch.resolve_budget("auto", _Model(SMOLLM2), cpu) == 256  # floor: never a silly budget
    assert (
        microbatch.resolve_budget(None, _Model(SMOLLM2), cpu) is None and microbatch.resolve_budget(77, None, cpu) == 77
    )
    assert microbatch.resolve_budget("auto", torch.nn.Linear(2, 2), cpu) is None  # nothing to size: one pass


def test_tiny_default_keeps_one_pass(tiny_model):
    learner = Learner(tiny_model, LearnerConfig(), temperature=1.0, max_len_norm=64)
    # 4 x 4 layers x (8 x 192 + 4 x 96 + 5 x 512) = 71,680 bytes per token: > 10k tokens on any machine with >= 11 GiB
    assert microbatch.activation_bytes_per_token(tiny_model.config) == 71_680
    assert learner.micro_batch_tokens == microbatch.device_memory_bytes(torch.device("cpu")) // 16 // 71_680


def test_config_accepts_auto_none_and_ints():
    assert LearnerConfig().micro_batch_tokens == "auto"
    assert load_run_config(overrides=["learner.micro_batch_tokens=null"]).learner.micro_batch_tokens is None
    assert load_run_config(overrides=["learner.micro_batch_tokens=512"]).learner.micro_batch_tokens == 512
    for bad in ("0", "lots"):
        with pytest.raises(ConfigError, match="micro_batch_tokens"):
            load_run_config(overrides=[f"learner.micro_batch_tokens={bad}"])
