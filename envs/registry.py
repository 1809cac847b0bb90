"""Environment ids under the ``eprl`` namespace, plus entry-point plugin discovery."""

from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points
from typing import Any, Callable

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator

from eprl.errors import ConfigError

NAMESPACE = "eprl"
PLUGIN_GROUP = "eprl.envs"
_loaded_plugins: set[tuple[str, str]] = set()
_plugins_scanned = False


class UnknownEnvironmentError(ConfigError):
    """Raised by ``make`` for an id that is not registered."""


class EnvKwargsError(ConfigError):
    """Raised by ``make`` for keyword arguments the environment's constructor does not take."""

    def __init__(self, message: str, unexpected: list[str]):
        super().__init__(message)
        self.unexpected = unexpected


def full_id(name: str) -> str:
    """'Arithmetic-v0' or 'eprl/Arithmetic-v0' -> 'eprl/Arithmetic-v0'."""
    return name if name.startswith(f"{NAMESPACE}/") else f"{NAMESPACE}/{name}"


def register_env(name: str, entry_point: str | Callable[..., gym.Env], **default_kwargs: Any) -> str:
    """Register an env as ``eprl/<name>``; re-registering an id replaces it. Returns the id."""
    env_id = full_id(name)
    gym.registry.pop(env_id, None)
    gym.register(id=env_id, entry_point=entry_point, kwargs=default_kwargs)
    return env_id


def load_plugins(rescan: bool = False) -> None:
    """Load entry points of group ``eprl.envs`` (once, or again with ``rescan=True``).

    An entry point is a zero-arg callable that registers envs itself, or a
    gymnasium.Env subclass registered as ``eprl/<entry-point name>``.
    """
    global _plugins_scanned
    if _plugins_scanned and not rescan:
        return
    _plugins_scanned = True
    for ep in entry_points(group=PLUGIN_GROUP):
        key = (ep.name, ep.value)
        if key in _loaded_plugins:
            continue
        _loaded_plugins.add(key)
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, gym.Env):
                register_env(ep.name, obj)
            elif callable(obj):
                obj()
            else:
                raise TypeError(f"expected a gymnasium.Env subclass or a callable, got {type(obj).__name__}")
        except Exception as e:  # a broken plugin must not break the framework
            warnings.warn(
                f"eprl: environment plugin {ep.name!r} ({ep.value}) failed to load: {e!r}", RuntimeWarning, stacklevel=2
            )


def list_envs() -> list[str]:
    """Sorted ids of all registered ``eprl/`` environments, plugins included."""
    load_plugins()
    return sorted(k for k in gym.registry if k.startswith(f"{NAMESPACE}/"))


def check_kwargs(env_id: str, kwargs: dict[str, Any]) -> None:
    """Raise EnvKwargsError, naming the argument and what the constructor takes, before calling it."""
    spec = gym.spec(env_id)
    creator = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    try:
        signature = inspect.signature(creator)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    params = signature.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    unexpected = sorted((set(spec.kwargs) | set(kwargs)) - set(accepted))
    if unexpected:
        where = spec.entry_point if isinstance(spec.entry_point, str) else getattr(creator, "__qualname__", creator)
        raise EnvKwargsError(
            f"{env_id} ({where}) takes no argument {', '.join(map(repr, unexpected))}; "
            f"it takes: {', '.join(accepted) or '(none)'}",
            unexpected,
        )


def make(env_id: str, **kwargs: Any) -> gym.Env:
    """``gymnasium.make`` for eprl ids (with or without the ``eprl/`` prefix)."""
    env_id = full_id(env_id)
    available = list_envs()
    if env_id not in available:
        raise UnknownEnvironmentError(
            f"unknown environment id {env_id!r}; registered: {', '.join(available) or '(none)'}"
        )
    check_kwargs(env_id, kwargs)
    return gym.make(env_id, **kwargs)
