"""Agents: everything between text and tokens. `make_agent(name, tokenizer, system_prompt)` by name.

AGENTS is a Registry (eprl/registry.py) of agent classes `(tokenizer, system_prompt=...) -> ChatAgent`;
installed packages add theirs through the entry-point group `eprl.agents`.
"""

from __future__ import annotations

from typing import Callable

from eprl.registry import Registry

from .chat import ChatAgent, TemplatePrefixError
from .trajectory import Trajectory

AGENTS: Registry[Callable[..., ChatAgent]] = Registry("agent type", group="eprl.agents")
AGENTS.register("chat", ChatAgent)
AGENTS.register("react", "eprl.agents.react:ReactAgent")
register_agent = AGENTS.register


def make_agent(name: str, tokenizer, system_prompt: str | None = None) -> ChatAgent:
    return AGENTS.get(name)(tokenizer, system_prompt=system_prompt)


__all__ = ["AGENTS", "ChatAgent", "TemplatePrefixError", "Trajectory", "make_agent", "register_agent"]
