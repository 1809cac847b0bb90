"""Rollout runner: K trajectories per task, all episodes of a batch stepped together.

Each turn, every unfinished episode contributes one prompt to a single engine call (the
engine batches them), then each env steps on its decoded action. Data flows one way: env text
-> agent tokens -> Trajectory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import gymnasium as gym
from tqdm.auto import tqdm

from .chat import ChatAgent, EpisodeState
from .trajectory import Trajectory


@dataclass
class RolloutStats:
    episodes: int = 0
    generated_tokens: int = 0
    engine_seconds: float = 0.0
    env_seconds: float = 0.0
    wall_seconds: float = 0.0
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

    def __init__(self, make_env: Callable[[], gym.Env], agent: ChatAgent, engine, *, max_turns: int,
                 max_context_tokens: int, progress: bool = True):
        self.make_env, self.agent, self.engine = make_env, agent, engine
        self.max_turns, self.max_context_tokens, self.progress = max_turns, max_context_tokens, progress
        self._pool: list[gym.Env] = []

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

    def run(self, task_indices: Sequence[int], group_size: int, sampling, seed: int, desc: str = "rollout"
            ) -> tuple[list[Trajectory], RolloutStats]:
        """Play `group_size` episodes of each task; group_id = position of the task in `task_indices`."""
        start = time.perf_counter()
        stats = RolloutStats()
        plan = [(g, t) for g, t in enumerate(task_indices) for _ in range(group_size)]
        episodes = []
        for n, (env, (group, task)) in enumerate(zip(self._envs(len(plan)), plan)):
            obs, info = env.reset(seed=seed + n, options={"task_index": int(task)})
            episodes.append(_Episode(env, self.agent.start(obs), str(info.get("task_id", task)), group))
        bar = tqdm(total=len(episodes), desc=desc, disable=not self.progress, leave=False)
        active = list(episodes)
        while active:
            fits = [ep for ep in active if len(ep.state.token_ids) + sampling.max_new_tokens <= self.max_context_tokens]
            for ep in active:
                if ep not in fits:
                    ep.done = "context_limit"
            if fits:
                t0 = time.perf_counter()
                gens = self.engine.generate([ep.state.token_ids for ep in fits], sampling, self.agent.stop_token_ids)
                stats.engine_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                for ep, gen in zip(fits, gens):
                    stats.generated_tokens += len(gen.token_ids)
                    self._step(ep, gen)
                stats.env_seconds += time.perf_counter() - t0
            still = [ep for ep in active if ep.done is None]
            bar.update(len(active) - len(still))
            active = still
        bar.close()
        stats.episodes = len(episodes)
        stats.wall_seconds = time.perf_counter() - start
        return [self._finish(ep) for ep in episodes], stats

    def _step(self, ep: _Episode, gen) -> None:
        action = self.agent.record_action(ep.state, gen.token_ids, gen.logprobs)
        obs, reward, terminated, truncated, info = ep.env.step(action)
        ep.reward += float(reward)
        ep.info = dict(info)
        if terminated or truncated:
            ep.done = "terminated" if terminated else "truncated"
        elif ep.state.turn_spans and len(ep.state.turn_spans) >= self.max_turns:
            ep.done = "max_turns"
        else:
            self.agent.record_observation(ep.state, obs)

    @staticmethod
    def _finish(ep: _Episode) -> Trajectory:
        s = ep.state
        return Trajectory(token_ids=list(s.token_ids), loss_mask=list(s.loss_mask), inference_logprobs=list(s.logprobs),
                          turn_spans=list(s.turn_spans), reward=ep.reward, success=bool(ep.info.get("success", False)),
                          task_id=ep.task_id, group_id=ep.group_id, termination=ep.done or "terminated",
                          messages=list(s.messages), info=ep.info)
