"""The task suite section of a run config (tasks/*.yaml): environment, splits, agent, sampling, group sizes.

One cross-field rule lives here: the agent's turn cap and the env's turn limit agree (or the agent's follows).
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import Field, field_validator, model_validator

from eprl.agents.engines.config import SamplingConfig, Strict


class EnvSpec(Strict):
    id: str = Field("eprl/ArithmeticTool-v0", description="registered environment id (see `eprl envs`)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the environment")


class SplitSpec(Strict):
    env_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="env kwargs for this split, merged over env.kwargs (e.g. split: test)"
    )
    num_tasks: Optional[int] = Field(
        None, description="number of tasks in the split (None: all of a dataset; required for procedural envs in eval)"
    )


class AgentConfig(Strict):
    type: str = Field("chat", description="agent type by name: chat | react")
    system_prompt: Optional[str] = Field(None, description="system message prepended to every episode (None: none)")
    max_turns: int = Field(6, gt=0, description="agent-side cap on turns per episode (the env may truncate earlier)")
    max_context_tokens: int = Field(
        1024, gt=0, description="episode stops (truncated) when the token sequence would exceed this"
    )
    env_workers: int = Field(
        0, ge=0, description="threads that reset/step envs concurrently (I/O-bound envs like AppWorld); 0 = main thread"
    )
    on_env_error: Literal["fail_episode", "raise"] = Field(
        "fail_episode",
        description="an env whose reset/step raises (or breaks the env contract): fail that episode (reward 0, termination 'error', traceback logged once per kind) or stop the run",
    )
    max_failed_episodes_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="fail_episode: the run stops when more than this share of one batch's episodes failed in the env",
    )

    @field_validator("type")
    @classmethod
    def _known_agent(cls, v: str) -> str:
        from eprl.agents import AGENTS

        return AGENTS.check(v)


class TaskSuite(Strict):
    name: str = Field("suite", description="suite name, used in run directories and metrics")
    env: EnvSpec = Field(default_factory=EnvSpec, description="environment and its kwargs")
    train: SplitSpec = Field(
        default_factory=lambda: SplitSpec(env_kwargs={"split": "train"}), description="training split"
    )
    eval: SplitSpec = Field(
        default_factory=lambda: SplitSpec(env_kwargs={"split": "test"}, num_tasks=64),
        description="held-out evaluation split",
    )
    agent: AgentConfig = Field(default_factory=AgentConfig, description="agent settings")
    group_size: int = Field(8, ge=1, description="K: trajectories sampled per task (a group)")
    tasks_per_iteration: int = Field(8, ge=1, description="tasks (groups) sampled per training iteration")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="sampling for training rollouts")
    eval_sampling: SamplingConfig = Field(
        default_factory=lambda: SamplingConfig(greedy=True), description="sampling for evaluation"
    )
    eval_samples: int = Field(1, ge=1, description="samples per eval task (pass@k uses k <= eval_samples)")

    @model_validator(mode="after")
    def _one_turn_limit(self) -> "TaskSuite":
        """The agent's turn cap and the env's must agree: the larger one would never act. An agent.max_turns
        left unset follows the env's (when both splits give the env the same limit)."""
        found = env_turn_limits(self)
        if "max_turns" not in self.agent.model_fields_set and len({v for _, v in found}) == 1:
            self.agent.max_turns = found[0][1]
        for field, value in found:
            if value != self.agent.max_turns:
                raise ValueError(
                    f"agent.max_turns={self.agent.max_turns} disagrees with {field}={value}: the smaller "
                    "limit ends every episode and the other never acts; set them equal (an unset "
                    "agent.max_turns follows the env's)"
                )
        return self


ENV_TURN_LIMITS = ("max_turns", "max_interactions")  # env kwargs that cap an episode's turns (math envs, AppWorld)


def env_turn_limits(suite: TaskSuite) -> list[tuple[str, int]]:
    """(field, value) of each split's env turn limit given in the suite; None (the env's default) is left out."""
    found: list[tuple[str, int]] = []
    for split in ("train", "eval"):
        split_kwargs = getattr(suite, split).env_kwargs
        for key in ENV_TURN_LIMITS:
            field, value = (
                (f"{split}.env_kwargs.{key}", split_kwargs[key])
                if key in split_kwargs
                else (f"env.kwargs.{key}", suite.env.kwargs.get(key))
            )
            if isinstance(value, int) and not isinstance(value, bool) and (field, value) not in found:
                found.append((field, value))
    return found
