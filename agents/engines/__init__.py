"""Rollout engines by name. `make_engine(name, model, tokenizer, cfg)` builds one.

ENGINES is a Registry (eprl/registry.py) of factories `(model, tokenizer, engine_cfg) -> Engine`; the built-in
ones are named by "module:attr" and imported on first use (the vllm package only when that engine is built);
installed packages add theirs through the entry-point group `eprl.engines`.
"""

from __future__ import annotations

from typing import Callable

from eprl.registry import Registry

from .base import Engine, Generation, SamplingError, check_unbiased
from .scripted import ScriptedEngine

ENGINES: Registry[Callable[..., Engine]] = Registry("engine", group="eprl.engines")
ENGINES.register("hf", "eprl.agents.engines.hf:make_hf_engine")
ENGINES.register("vllm", "eprl.agents.engines.vllm:make_vllm_engine")
register_engine = ENGINES.register


def make_engine(name: str, model, tokenizer, cfg) -> Engine:
    return ENGINES.get(name)(model, tokenizer, cfg)


__all__ = [
    "ENGINES",
    "Engine",
    "Generation",
    "SamplingError",
    "ScriptedEngine",
    "check_unbiased",
    "make_engine",
    "register_engine",
]
