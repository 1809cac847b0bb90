"""Rollout engines by name. `make_engine(name, model, tokenizer, cfg)` builds one."""
from __future__ import annotations

from typing import Callable

from .base import Engine, Generation, SamplingError, check_unbiased

ENGINES: dict[str, Callable[..., Engine]] = {}


def register_engine(name: str):
    def deco(factory):
        ENGINES[name] = factory
        return factory
    return deco


def make_engine(name: str, model, tokenizer, cfg) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; registered: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](model, tokenizer, cfg)


from . import hf  # noqa: E402,F401  (registers "hf")
from . import vllm  # noqa: E402,F401  (registers "vllm"; imports the vllm package only when built)

__all__ = ["ENGINES", "Engine", "Generation", "SamplingError", "check_unbiased", "make_engine", "register_engine"]
