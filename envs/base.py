"""The text environment contract: a gymnasium.Env whose observations and actions are str."""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
from gymnasium import spaces

from eprl.envs.contract import checked_reset, checked_step, env_name

MAX_TEXT_LENGTH = 1_000_000


class TextSpace(spaces.Text):
    """A text space that contains any Python str up to ``max_length`` characters."""

    def __init__(self, max_length: int = MAX_TEXT_LENGTH, seed: int | None = None):
        super().__init__(max_length, min_length=0, charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def sample(self, mask=None, probability=None) -> str:
        """A short random printable string (at most 32 characters)."""
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        length = int(self.np_random.integers(0, min(32, self.max_length) + 1))
        return "".join(self.np_random.choice(self.character_list, size=length))

    def __repr__(self) -> str:
        return f"TextSpace(max_length={self.max_length})"


class EpisodeOverError(RuntimeError):
    """Raised by ``step`` after the episode terminated or was truncated."""


class TextEnv(gym.Env[str, str]):
    """Base class for text environments.

    Subclasses implement ``_reset_task(index) -> (obs, info)`` and
    ``_step_text(action) -> (obs, reward, terminated, truncated, info)`` and may
    override ``num_tasks`` (None means an infinite, procedural task source).
    ``reset(options={"task_index": i})`` picks task ``i`` deterministically;
    otherwise the task is drawn with ``self.np_random``.
    """

    metadata = {"render_modes": []}

    def __init__(self, max_text_length: int = MAX_TEXT_LENGTH):
        self.observation_space = TextSpace(max_text_length)
        self.action_space = TextSpace(max_text_length)
        self._episode_over: bool | None = None  # None: never reset
        self.task_id: str | None = None

    @property
    def num_tasks(self) -> int | None:
        return None

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        index = self._task_index(options or {})
        obs, info = checked_reset(self._reset_task(index), env_name(self), index)
        self._episode_over = False
        self.task_id = info["task_id"]
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._episode_over is None:
            raise EpisodeOverError("call reset() before step()")
        if self._episode_over:
            raise EpisodeOverError(f"episode of task {self.task_id!r} is over; call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        try:
            obs, reward, terminated, truncated, info = checked_step(
                self._step_text(action), env_name(self), self.task_id
            )
        except Exception:
            self._episode_over = True  # its state is unknown: a failed step ends the episode
            raise
        self._episode_over = terminated or truncated
        return obs, reward, terminated, truncated, info

    def _task_index(self, options: dict) -> int:
        n = self.num_tasks
        if options.get("task_index") is not None:
            index = int(options["task_index"])
            if index < 0 or (n is not None and index >= n):
                raise IndexError(f"task_index {index} out of range for {n if n is not None else 'infinite'} tasks")
            return index
        return int(self.np_random.integers(n if n is not None else 2**31 - 1))

    def episode_metrics(self, infos: list[dict]) -> dict[str, float]:
        """Env-specific evaluation metrics over finished episodes' final `info` dicts
        (each also holds `task_id` and `success`); merged into `eprl eval` results."""
        return {}

    def _reset_task(self, index: int) -> tuple[str, dict]:
        raise NotImplementedError

    def _step_text(self, action: str) -> tuple[str, float, bool, bool, dict]:
        raise NotImplementedError
