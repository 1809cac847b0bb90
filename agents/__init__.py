"""Agents: everything between text and tokens. `make_agent(name, tokenizer, cfg)` by name."""
from __future__ import annotations

from typing import Callable

from .chat import ChatAgent, TemplatePrefixError
from .trajectory import Trajectory

AGENTS: dict[str, Callable[..., ChatAgent]] = {"chat": ChatAgent}


def register_agent(name: str):
    def deco(cls):
        AGENTS[name] = cls
        return cls
    return deco


def make_agent(name: str, tokenizer, system_prompt: str | None = None) -> ChatAgent:
    if name not in AGENTS:
        raise ValueError(f"unknown agent type {name!r}; registered: {', '.join(sorted(AGENTS))}")
    return AGENTS[name](tokenizer, system_prompt=system_prompt)


from . import react  # noqa: E402,F401  (registers "react")


__all__ = ["AGENTS", "ChatAgent", "TemplatePrefixError", "Trajectory", "make_agent", "register_agent"]
