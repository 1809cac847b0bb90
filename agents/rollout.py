"""Rollout runner: K trajectories per task, all episodes of a batch stepped together.

Each turn, every unfinished episode contributes one prompt to a single engine call (the
engine batches them), then each env steps on its decoded action. Data flows one way: env text
-> agent tokens -> Trajectory.

Every env reply crosses `envs.contract` (types, finite rewards) and a size cap before it is
tokenized, so no env can put a non-finite reward or an observation beyond `max_context_tokens`
into a trajectory. An env that raises fails only its episode (`on_env_error: fail_episode`):
reward 0, termination "error", counted in `RolloutStats.failed_episodes`, its traceback logged
once per kind of error; past `max_failed_fraction` of a batch the run stops with EnvFailureError.
"""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import gymnasium as gym
from tqdm.auto import tqdm

from eprl.envs.contract import cap_text, checked_reset, checked_step, env_name

from .chat import ChatAgent, EpisodeState
from .trajectory import Trajectory

ON_ENV_ERROR = ("fail_episode", "raise")
log = logging.getLogger("eprl.rollout")


class EnvFailureError(RuntimeError):
    """Too many episodes of one batch failed in the env: the run stops rather than train on them."""


@dataclass
class RolloutStats:
    episodes: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0
    env_seconds: float = 0.0
    wall_seconds: float = 0.0
    failed_episodes: int = 0  # episodes ended by an env error (on_env_error: fail_episode)
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / max(self.wall_seconds, 1e-9)


@dataclass
class _Episode:
    env: gym.Env
    state: EpisodeState
    task_id: str
    group_id: int
    reward: float = 0.0
    info: dict = field(default_factory=dict)
    done: str | None = None


class RolloutRunner:
    """Runs episodes of one environment factory with one agent and engine."""

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        agent: ChatAgent,
        engine,
        *,
        max_turns: int,
        max_context_tokens: int,
        progress: bool = True,
        env_workers: int = 0,
        on_env_error: str = "fail_episode",
        max_failed_fraction: float = 0.2,
        max_observation_chars: int | None = None,
    ):
        if on_env_error not in ON_ENV_ERROR:
            raise ValueError(f"on_env_error={on_env_error!r}; choose from {ON_ENV_ERROR}")
        self.make_env, self.agent, self.engine = make_env, agent, engine
        self.max_turns, self.max_context_tokens, self.progress = max_turns, max_context_tokens, progress
        self.on_env_error, self.max_failed_fraction = on_env_error, max_failed_fraction
        # A cheap character cap before tokenizing (a token rarely spans 16 characters); the token cap is exact.
        self.max_observation_chars = max_observation_chars or 16 * max_context_tokens
        self._logged_errors: set[tuple] = set()
        # Threads for env reset/step: worth it for I/O-bound envs (AppWorld servers); 0 keeps every env
        # call on the main thread, which SIGALRM-based checkers (math-verify) prefer.
        self.env_workers = env_workers
        self._pool: list[gym.Env] = []

    def _map(self, fn, items: list) -> list:
        if self.env_workers <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self.env_workers, len(items))) as pool:
            return list(pool.map(fn, items))

    @property
    def num_tasks(self) -> int | None:
        """Size of the env's task set (None: procedural, unbounded)."""
        return self._envs(1)[0].unwrapped.num_tasks

    def episode_metrics(self, trajectories: Sequence[Trajectory]) -> dict[str, float]:
        """The env's own evaluation metrics (e.g. AppWorld's TGC/SGC) over finished episodes."""
        infos = [{**t.info, "task_id": t.task_id, "success": t.success} for t in trajectories]
        return self._envs(1)[0].unwrapped.episode_metrics(infos)

    def close(self) -> None:
        """Close every pooled env (AppWorld envs stop their servers)."""
        for env in self._pool:
            env.close()
        self._pool.clear()

    def _envs(self, n: int) -> list[gym.Env]:
        while len(self._pool) < n:
            self._pool.append(self.make_env())
        return self._pool[:n]

    def run(
        self, task_indices: Sequence[int], group_size: int, sampling, seed: int, desc: str = "rollout"
    ) -> tuple[list[Trajectory], RolloutStats]:
        """Play `group_size` episodes of each task; group_id = position of the task in `task_indices`."""
        start = time.perf_counter()
        stats = RolloutStats()
        plan = [(g, t) for g, t in enumerate(task_indices) for _ in range(group_size)]
        envs = self._envs(len(plan))
        resets = self._map(
            lambda n: self._guard(
                lambda: checked_reset(
                    envs[n].reset(seed=seed + n, options={"task_index": int(plan[n][1])}), env_name(envs[n]), plan[n][1]
                ),
                envs[n],
                plan[n][1],
            ),
            list(range(len(plan))),
        )
        episodes = []
        for env, (group, task), reset in zip(envs, plan, resets):
            if isinstance(reset, BaseException):  # the env could not even start: an empty, failed episode
                ep = _Episode(env, self.agent.start("", max_tokens=self.max_context_tokens), str(task), group)
                self._fail(ep, reset)
            else:
                obs, info = reset
                obs = cap_text(obs, self.max_observation_chars)
                ep = _Episode(env, self.agent.start(obs, max_tokens=self.max_context_tokens), info["task_id"], group)
            episodes.append(ep)
        bar = tqdm(total=len(episodes), desc=desc, disable=not self.progress, leave=False)
        active = [ep for ep in episodes if ep.done is None]
        bar.update(len(episodes) - len(active))
        while active:
            fits = []
            for ep in active:  # one pass: `ep in fits` would compare dataclasses field by field, quadratically
                if len(ep.state.token_ids) + sampling.max_new_tokens <= self.max_context_tokens:
                    fits.append(ep)
                else:
                    ep.done = "context_limit"
            if fits:
                t0 = time.perf_counter()
                gens = self.engine.generate([ep.state.token_ids for ep in fits], sampling, self.agent.stop_token_ids)
                stats.engine_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                actions = [
                    self.agent.record_action(ep.state, gen.token_ids, gen.logprobs) for ep, gen in zip(fits, gens)
                ]
                stats.generated_tokens += sum(len(gen.token_ids) for gen in gens)
                results = self._map(
                    lambda i, fits=fits, actions=actions: self._guard(
                        lambda: checked_step(fits[i].env.step(actions[i]), env_name(fits[i].env), fits[i].task_id),
                        fits[i].env,
                        fits[i].task_id,
                    ),
                    list(range(len(fits))),
                )
                for ep, result in zip(fits, results):
                    if isinstance(result, BaseException):
                        self._fail(ep, result)
                    else:
                        self._record(ep, *result)
                stats.env_seconds += time.perf_counter() - t0
            still = [ep for ep in active if ep.done is None]
            bar.update(len(active) - len(still))
            active = still
        bar.close()
        stats.episodes = len(episodes)
        stats.failed_episodes = sum(ep.done == "error" for ep in episodes)
        stats.wall_seconds = time.perf_counter() - start
        if stats.failed_episodes > self.max_failed_fraction * stats.episodes:
            first = next(ep.info["env_error"] for ep in episodes if ep.done == "error")
            raise EnvFailureError(
                f"env {env_name(envs[0])}: {stats.failed_episodes} of {stats.episodes} episodes failed in one batch "
                f"(limit {self.max_failed_fraction:.0%}), first error: {first}; fix the env, or raise "
                "task.agent.max_failed_episodes_fraction"
            )
        return [self._finish(ep) for ep in episodes], stats

    def _guard(self, call: Callable, env: gym.Env, task) -> object:
        """``call()``, or (on_env_error: fail_episode) the exception it raised, logged with its traceback
        the first time this kind of error (type and raising line) is seen."""
        try:
            return call()
        except Exception as err:
            if self.on_env_error == "raise":
                raise
            frames = traceback.extract_tb(err.__traceback__)
            kind = (type(err).__name__, frames[-1].filename, frames[-1].lineno) if frames else (type(err).__name__,)
            if kind not in self._logged_errors:
                self._logged_errors.add(kind)
                log.error(
                    "env %s, task %r failed; the episode ends with reward 0 (on_env_error: fail_episode):\n%s",
                    env_name(env),
                    task,
                    "".join(traceback.format_exception(err)).rstrip(),
                )
            return err

    @staticmethod
    def _fail(ep: _Episode, err: BaseException) -> None:
        ep.reward, ep.done = 0.0, "error"
        ep.info = {
            "env_error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:500],
            "success": False,
        }

    def _record(self, ep: _Episode, obs: str, reward: float, terminated: bool, truncated: bool, info: dict) -> None:
        ep.reward += float(reward)
        ep.info = dict(info)
        if terminated or truncated:
            ep.done = "terminated" if terminated else "truncated"
        elif ep.state.turn_spans and len(ep.state.turn_spans) >= self.max_turns:
            ep.done = "max_turns"
        else:
            room = self.max_context_tokens - len(ep.state.token_ids)
            if not self.agent.record_observation(ep.state, cap_text(obs, self.max_observation_chars), max_tokens=room):
                ep.done = "context_limit"  # cut to the context; an observation never grows a trajectory past it

    @staticmethod
    def _finish(ep: _Episode) -> Trajectory:
        s = ep.state
        return Trajectory(
            token_ids=list(s.token_ids),
            loss_mask=list(s.loss_mask),
            inference_logprobs=list(s.logprobs),
            turn_spans=list(s.turn_spans),
            reward=ep.reward,
            success=bool(ep.info.get("success", False)),
            task_id=ep.task_id,
            group_id=ep.group_id,
            termination=ep.done or "terminated",
            messages=list(s.messages),
            info=ep.info,
        )
