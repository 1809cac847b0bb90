"""The env boundary: what ``reset`` and ``step`` must return, checked for every env (built-in or plugin).

Rules (also in the README's "Registering an environment"):
- observations are ``str``; anything else is rejected (an int is a bug, not a message);
- rewards are real numbers (bool, int, float, numpy scalars become float); NaN and inf are rejected;
- ``terminated`` / ``truncated`` are bools (numpy bools and the ints 0/1 are accepted);
- ``info`` is a dict (None counts as {}); a missing ``info["task_id"]`` on reset becomes the task
  index as a string; a missing ``info["success"]`` counts as False.
A violation raises ``EnvContractError``: one line naming the env id and the task.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np


class EnvContractError(ValueError):
    """An env returned something the contract above does not allow."""


def env_name(env: Any) -> str:
    """The registered id of ``env`` (e.g. 'eprl/Arithmetic-v0'), else its class name."""
    spec = getattr(env, "spec", None) or getattr(getattr(env, "unwrapped", None), "spec", None)
    return getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__


def _fail(env: str, task: Any, what: str) -> EnvContractError:
    return EnvContractError(f"env {env}, task {task!r}: {what}")


def _flag(value: Any, name: str, env: str, task: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise _fail(env, task, f"step() returned {name}={value!r} ({type(value).__name__}); it must be a bool")


def _info(info: Any, where: str, env: str, task: Any) -> dict:
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise _fail(env, task, f"{where} returned info of type {type(info).__name__}; it must be a dict")
    return info


def _observation(obs: Any, where: str, env: str, task: Any) -> str:
    if not isinstance(obs, str):
        raise _fail(
            env, task, f"{where} returned an observation of type {type(obs).__name__}; observations must be str"
        )
    return obs


def checked_reset(result: Any, env: str, task_index: Any) -> tuple[str, dict]:
    """``reset()``'s (obs, info), validated; info gets a task_id (the index) when it has none."""
    if not (isinstance(result, tuple) and len(result) == 2):
        raise _fail(env, task_index, f"reset() must return (observation, info), got {type(result).__name__}")
    obs = _observation(result[0], "reset()", env, task_index)
    info = dict(_info(result[1], "reset()", env, task_index))
    if info.get("task_id") is None:
        info["task_id"] = str(task_index)
    info["task_id"] = str(info["task_id"])
    return obs, info


def checked_step(result: Any, env: str, task_id: Any) -> tuple[str, float, bool, bool, dict]:
    """``step()``'s 5-tuple, validated and normalized (reward float, flags bool, info dict)."""
    if not (isinstance(result, tuple) and len(result) == 5):
        raise _fail(
            env,
            task_id,
            "step() must return (observation, reward, terminated, truncated, info), "
            f"got {type(result).__name__} of length {len(result) if isinstance(result, tuple) else '-'}",
        )
    obs, reward, terminated, truncated, info = result
    obs = _observation(obs, "step()", env, task_id)
    if not isinstance(reward, numbers.Real):  # bool, int, float and numpy scalars are Real
        raise _fail(env, task_id, f"step() returned a reward of type {type(reward).__name__}; it must be a real number")
    reward = float(reward)
    if not math.isfinite(reward):
        raise _fail(env, task_id, f"step() returned a non-finite reward ({reward}); rewards must be finite numbers")
    info = _info(info, "step()", env, task_id)
    if "success" in info and not isinstance(info["success"], (bool, np.bool_)):
        raise _fail(env, task_id, f"info['success'] is {info['success']!r}; it must be a bool")
    return obs, reward, _flag(terminated, "terminated", env, task_id), _flag(truncated, "truncated", env, task_id), info


def cap_text(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, with a note saying so."""
    if len(text) <= max_chars:
        return text
    note = f"\n[observation truncated: {len(text)} characters, limit {max_chars}]"
    return text[: max(0, max_chars - len(note))] + note
