"""The parts a Trainer is made of, each built by one small function (issue #12 item 4).

    build_policy  -> (model on its device, tokenizer, rollout copy)
    build_engine  -> the rollout engine sampling from the rollout copy
    build_runners -> (train runner, eval runner, num_train_tasks, num_eval_tasks)
    build_learner -> the Learner (optimizer included) updating the model

`Trainer.from_config` (training/loop.py) calls them in this order; `eprl eval` calls the first three
(`build_runner` for the eval split alone) and never builds a learner or an optimizer.

Under torchrun the learner shards the model in place and rank 0 alone samples: `build_policy` gives
rank 0 a plain full copy to sample from and checkpoint (None on the other ranks), and only rank 0
builds an engine and runners.
"""

from __future__ import annotations

import copy

import torch

from eprl.agents import make_agent
from eprl.agents.engines import make_engine
from eprl.agents.rollout import RolloutRunner

from . import distributed
from .config import ConfigError, RunConfig
from .learner import Learner
from .policy import env_factory, load_policy


def build_policy(cfg: RunConfig, model_path: str):
    """(model, tokenizer, rollout_model): the policy loaded from `model_path`, on its device.

    rollout_model is what the engine samples from and checkpoints are written from: the model itself
    in one process; under torchrun a plain copy on rank 0 (None elsewhere), since the learner shards `model`.
    Sets `run.threads` first, as the model load already uses them.
    """
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    model, tokenizer = load_policy(model_path, cfg)
    device = distributed.resolve_device(cfg.run.device)
    rollout_model = model
    if distributed.active():  # the learner shards `model` (FSDP places the shards); rank 0 keeps a plain copy
        rollout_model = copy.deepcopy(model).to(device) if distributed.is_main() else None
    else:
        model.to(device)
    return model, tokenizer, rollout_model


def build_engine(cfg: RunConfig, rollout_model, tokenizer):
    """The configured engine (`engine.type`) sampling from `rollout_model`."""
    return make_engine(cfg.engine.type, rollout_model, tokenizer, cfg.engine)


def build_agent(cfg: RunConfig, tokenizer):
    return make_agent(cfg.task.agent.type, tokenizer, cfg.task.agent.system_prompt)


def _runner(cfg: RunConfig, split: str, engine, agent) -> RolloutRunner:
    suite = cfg.task
    return RolloutRunner(
        env_factory(suite, split),
        agent,
        engine,
        max_turns=suite.agent.max_turns,
        max_context_tokens=suite.agent.max_context_tokens,
        progress=cfg.run.progress,
        env_workers=suite.agent.env_workers,
        on_env_error=suite.agent.on_env_error,
        max_failed_fraction=suite.agent.max_failed_episodes_fraction,
    )


def _num_tasks(cfg: RunConfig, split: str, runner: RolloutRunner) -> int | None:
    """The split's configured `num_tasks`, else the env's own size (None: procedural); eval needs one."""
    num_tasks = getattr(cfg.task, split).num_tasks or runner.num_tasks
    if split == "eval" and num_tasks is None:
        raise ConfigError("task.eval.num_tasks: must be set for a procedural environment (it has no fixed size)")
    return num_tasks


def build_runner(cfg: RunConfig, split: str, engine, tokenizer):
    """(runner, num_tasks) for one split ('train' or 'eval'), with its own agent."""
    runner = _runner(cfg, split, engine, build_agent(cfg, tokenizer))
    try:
        return runner, _num_tasks(cfg, split, runner)
    except BaseException:
        runner.close()
        raise


def build_runners(cfg: RunConfig, engine, tokenizer):
    """(train_runner, eval_runner, num_train_tasks, num_eval_tasks), sharing one agent."""
    agent = build_agent(cfg, tokenizer)
    train_runner, eval_runner = _runner(cfg, "train", engine, agent), _runner(cfg, "eval", engine, agent)
    try:
        return train_runner, eval_runner, _num_tasks(cfg, "train", train_runner), _num_tasks(cfg, "eval", eval_runner)
    except BaseException:
        train_runner.close()
        eval_runner.close()
        raise


def build_learner(cfg: RunConfig, model) -> Learner:
    """The Learner (and its optimizer) for `model`; under torchrun it shards `model` in place."""
    suite = cfg.task
    return Learner(
        model,
        cfg.learner,
        temperature=suite.sampling.temperature,
        max_len_norm=cfg.learner.max_len_norm or suite.agent.max_context_tokens,
        dtype=cfg.model.dtype,
    )
