"""Typed configuration: a task suite (tasks/*.yaml) plus a run config, validated by pydantic.

Every field has a default and a one-line description (`Field(description=...)`); unknown keys
are errors. `load_run_config` turns YAML files and `--set a.b=c` overrides into a `RunConfig`
and raises `ConfigError` with one line naming the offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from eprl.agents.engines.config import EngineConfig, SamplingConfig, Strict
from eprl.errors import ConfigError

from .learner_config import CONTROLLER_FIELDS, EntropyControlConfig, LearnerConfig
from .task_config import AgentConfig, EnvSpec, SplitSpec, TaskSuite

__all__ = [
    "AgentConfig",
    "ConfigError",
    "CONTROLLER_FIELDS",
    "EngineConfig",
    "EntropyControlConfig",
    "EnvSpec",
    "LearnerConfig",
    "RunConfig",
    "SamplingConfig",
    "SplitSpec",
    "Strict",
    "TaskSuite",
    "describe",
    "load_run_config",
    "load_task_suite",
    "updated",
]


# Named choices (agent, engine, advantage, loss, aggregation, entropy control) are validated against their
# Registry (eprl/registry.py), so a plugin's name is as valid as a built-in one. The registries are imported
# inside the validators: their modules import torch, which loading a config does not need.


# ----------------------------------------------------------------------------- run
class ModelConfig(Strict):
    name_or_path: Optional[str] = Field(
        None, description="HF causal LM directory or hub id; None builds the embedded tiny default"
    )
    dtype: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="model compute dtype; log-probs/ratios/entropies stay float32"
    )
    tiny_sft_steps: int = Field(200, ge=0, description="embedded default: supervised warm-start steps")
    tiny_sft_noise: float = Field(
        0.3, ge=0, le=1, description="embedded default: share of warm-start demos with a deliberate mistake"
    )
    cache_dir: Optional[str] = Field(
        None, description="where the embedded default model is cached (None: ~/.cache/eprl)"
    )
    lora: bool = Field(False, description="train a LoRA adapter instead of all weights")
    lora_rank: int = Field(16, description="LoRA rank")
    lora_alpha: int = Field(32, description="LoRA alpha")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="modules that get LoRA adapters"
    )


class RunSection(Strict):
    iterations: int = Field(50, ge=0, description="training iterations")
    seed: int = Field(0, description="seed for tasks, sampling and init")
    out_dir: str = Field("runs", description="parent directory of run directories")
    name: Optional[str] = Field(None, description="run directory name (None: <suite>-<time>)")
    checkpoint_every: int = Field(5, ge=1, description="save a checkpoint every N iterations (and at the end)")
    eval_every: int = Field(0, ge=0, description="evaluate every N iterations (0: only before and after training)")
    threads: Optional[int] = Field(None, description="torch threads (None: torch default)")
    progress: bool = Field(True, description="show progress bars")
    overlap: bool = Field(
        False,
        description="sample the next batch (in a second process, with the weights before this update) while the learner updates: one-step off-policy, ratio against the sampler's log-probs (training/overlap.py); engine hf, one process",
    )
    device: str = Field(
        "auto",
        description="where the policy computes: auto (cuda if available, else cpu) | cpu | cuda | cuda:N; under torchrun each rank uses cuda:LOCAL_RANK",
    )
    metric_sinks: list[str] = Field(
        default_factory=lambda: ["jsonl"],
        description="where metrics and eval rows go, by name: jsonl (RUN_DIR/metrics.jsonl, eval.jsonl; always: a run reads them back) | tensorboard (RUN_DIR/tensorboard/, needs the tensorboard package)",
    )

    @field_validator("metric_sinks")
    @classmethod
    def _known_sinks(cls, v: list[str]) -> list[str]:
        from .metrics import METRIC_SINKS

        for name in v:
            METRIC_SINKS.check(name)
        if "jsonl" not in v or len(set(v)) != len(v):
            raise ValueError(
                "name each sink once, jsonl among them (resume, summary.json and `eprl plot` read it back)"
            )
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        import torch

        try:
            torch.device("cpu" if v == "auto" else v)
        except RuntimeError:
            raise ValueError(f"unknown device {v!r}; use auto, cpu, cuda or cuda:N") from None
        return v


class RunConfig(Strict):
    task: TaskSuite = Field(default_factory=TaskSuite, description="the task suite (usually loaded from tasks/*.yaml)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="policy model")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="rollout engine")
    learner: LearnerConfig = Field(default_factory=LearnerConfig, description="learner (see docs/algorithms.md)")
    run: RunSection = Field(default_factory=RunSection, description="loop, seeds, output")

    @model_validator(mode="before")
    @classmethod
    def _overlap_ratio_against_the_sampler(cls, data: Any) -> Any:
        # run.overlap: batches are one update stale, so logp_old is the sampler's log-prob unless the learner chooses
        learner = data.get("learner", {}) if isinstance(data, dict) else None
        if (
            isinstance(learner, dict)
            and isinstance(data.get("run"), dict)
            and data["run"].get("overlap")
            and "old_logprobs" not in learner
            and learner.get("tis_cap") is None
        ):
            data = {**data, "learner": {**learner, "old_logprobs": "inference"}}
        return data

    @model_validator(mode="after")
    def _head_precision(self) -> "RunConfig":
        if self.learner.fp32_lm_head is not None and self.model.dtype == "fp32":
            raise ValueError("learner.fp32_lm_head with model.dtype=fp32: the head already computes in float32")
        return self

    @model_validator(mode="after")
    def _overlap_combinations(self) -> "RunConfig":
        """run.overlap trains on batches sampled one update earlier: refuse what would not correct for it."""
        lc, on = self.learner, self.run.overlap
        for bad, message in (
            (
                on and lc.old_logprobs == "recompute" and lc.tis_cap is None,
                "run.overlap with learner.old_logprobs=recompute and no tis_cap: the ratio would be taken against the current "
                "policy, not the one-step-older one that sampled; use old_logprobs=inference (the overlap default) or tis_cap",
            ),
            (
                on and lc.loss == "pg" and lc.tis_cap is None,
                "run.overlap with learner.loss=pg: -A*logp has no ratio, so the staleness goes uncorrected; use another "
                "loss, or pg with old_logprobs=recompute and learner.tis_cap",
            ),
            (
                on and self.engine.type != "hf",
                f"run.overlap with engine.type={self.engine.type}: only the hf engine "
                "is supported (the sampler process builds its own copy of the policy)",
            ),
        ):
            if bad:
                raise ValueError(message)
        return self


# ----------------------------------------------------------------------------- loading
def _read_yaml(path: str | Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what}: file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{what}: {path} is not UTF-8 (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{what}: malformed YAML in {path}{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping at top level, got {type(data).__name__}")
    return data


def _set_path(data: dict, dotted: str, raw: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
    try:
        node[keys[-1]] = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {dotted}={raw}: malformed YAML value ({getattr(err, 'problem', None) or err}); "
            "quote strings, e.g. --set 'task.agent.system_prompt=\"a: b\"'"
        ) from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _validate(model: type[BaseModel], data: dict, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = (prefix + ".".join(str(p) for p in first["loc"])).rstrip(".")
        msg = (
            "unknown field (check spelling; see the configuration reference in README)"
            if first["type"] == "extra_forbidden"
            else first["msg"]
        )
        got = "" if first["type"] == "extra_forbidden" else f" (got {first.get('input')!r})"
        if first["type"] == "value_error" and isinstance(first.get("input"), dict):  # a section's combination check
            msg, got = msg.removeprefix("Value error, "), ""
        raise ConfigError(f"{field}: {msg}{got}" if field else f"{msg}{got}") from None


def load_task_suite(path: str | Path) -> TaskSuite:
    """Load and validate one tasks/*.yaml file."""
    return _validate(TaskSuite, _read_yaml(path, "task suite"), prefix="task.")


def load_run_config(
    task: str | Path | None = None, config: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """Task suite YAML + optional run YAML + `a.b=c` overrides -> validated RunConfig."""
    data: dict = _read_yaml(config, "run config") if config else {}
    if task is not None:
        data = _merge(data, {"task": _read_yaml(task, "task suite")})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set learner.lr=1e-5")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), raw)
    return _validate(RunConfig, data)


def updated(cfg: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """A validated copy of `cfg` with `{"a.b": value}` changes; `cfg` itself is never mutated."""
    data = cfg.model_dump()
    for dotted, value in changes.items():
        *sections, key = dotted.split(".")
        node = data
        for section in sections:
            node = node[section]
        node[key] = value
    return _validate(RunConfig, data)


def describe(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, description) for every field: the README's configuration reference."""
    rows = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe(ann, f"{prefix}{name}."))
            continue
        default = field.get_default(call_default_factory=True)
        rows.append((prefix + name, repr(default), field.description or ""))
    return rows
