"""Checks a run passes before any model work, each failing in one line naming the field: the env id,
kwargs and data (by building each split's env once), the eval split's size, unbiased sampling, the
metric sinks' packages, what torchrun cannot run (run.overlap, learner.share_prefix), and a run directory that does not already hold a run."""

from __future__ import annotations

import time
from pathlib import Path

from eprl.agents.engines import SamplingError, check_unbiased

from . import distributed
from .config import ConfigError, RunConfig
from .metrics import METRIC_SINKS
from .overlap import check_overlap
from .policy import env_factory


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.run.out_dir) / (cfg.run.name or f"{cfg.task.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def check_run_dir_free(run_dir: Path) -> None:
    if any((run_dir / name).exists() for name in ("metrics.jsonl", "eval.jsonl", "checkpoints")):
        raise FileExistsError(
            f"run directory {run_dir} already holds a run; use `train --resume {run_dir}` or another run.name"
        )


def preflight(cfg: RunConfig, new_run: bool = True) -> None:
    """Fail in one line before any model work: env id, kwargs and data, eval size, sampling, run directory."""
    env_factory(cfg.task, "train")
    make_eval = env_factory(cfg.task, "eval")
    if cfg.task.eval.num_tasks is None:
        env = make_eval()
        size = env.unwrapped.num_tasks
        env.close()
        if size is None:
            raise ConfigError(
                f"task.eval.num_tasks: must be set for {cfg.task.env.id}, a procedural environment "
                "(it has no fixed size); e.g. --set task.eval.num_tasks=64"
            )
    for field in ("sampling", "eval_sampling"):
        try:
            check_unbiased(getattr(cfg.task, field))
        except SamplingError as err:
            raise ConfigError(f"task.{field}: {err}") from None
    for name in cfg.run.metric_sinks:  # a sink's missing package fails now, not at the first row
        try:
            METRIC_SINKS.get(name)
        except ConfigError as err:
            raise ConfigError(f"run.metric_sinks: {err}") from None
    check_overlap(cfg)
    if cfg.learner.share_prefix and distributed.active():
        raise ConfigError(
            "learner.share_prefix under torchrun: not supported (a sharded model runs its own forward, which "
            "cannot continue from a prefix's cache); drop learner.share_prefix or run in one process"
        )
    if new_run and cfg.run.name:
        check_run_dir_free(run_dir_for(cfg))
