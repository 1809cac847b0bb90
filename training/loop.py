"""The training recipe: rollout -> learn -> (eval) -> checkpoint, once per iteration.

The Trainer runs the recipe on parts built by training/builders.py (policy, engine, runners, learner;
`Trainer.from_config` builds them all); between rollout and collation, training/select.py's
`select_groups` picks the groups to train on.

Three entry points share it: a new run, `resume` (same run, bit-exact continuation from the
latest checkpoint) and `continue` (new run on a new task suite from a checkpoint's weights,
fresh optimizer and iteration counter, entropy target kept, parent recorded).

Under torchrun (training/distributed.py) rank 0 alone runs rollouts, evaluation, logging and
checkpoint writing; it broadcasts each iteration's collated batch and every rank takes part in
the sharded update. Rank 0's engine samples from a plain full copy of the policy, refreshed from
the gathered weights after every update: one more model copy in rank 0's CPU memory and one
all-gather of the weights per iteration.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .batch import collate
from .builders import build_engine, build_learner, build_policy, build_runners
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    latest_checkpoint,
    load_trainer_state,
    resolve_checkpoint,
    resumable_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from .collect import collect_episodes, sample_tasks  # noqa: F401  (sample_tasks: bench/rollout_engines.py)
from .config import RunConfig, updated
from .evaluate import eval_line, evaluate_suite
from .learner import Learner
from .metrics import MetricStream
from .overlap import OverlappedSampler
from .policy import resolve_model_path
from .preflight import check_run_dir_free, preflight, run_dir_for
from .select import select_groups

log = logging.getLogger("eprl.training.loop")


class Trainer:
    """Runs the recipe on parts built elsewhere (training/builders.py); `from_config` builds them.

    On ranks other than 0 (torchrun) there is no engine, runner or rollout copy: those are None.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path,
        *,
        model,
        tokenizer,
        rollout_model,
        engine,
        train_runner,
        eval_runner,
        num_train_tasks: int | None,
        num_eval_tasks: int | None,
        learner: Learner,
        meta: dict,
    ):
        self.cfg, self.run_dir, self.meta = cfg, Path(run_dir), meta
        self.main = distributed.is_main()
        self.model, self.tokenizer, self.rollout_model = model, tokenizer, rollout_model
        self.engine, self.train_runner, self.eval_runner = engine, train_runner, eval_runner
        self.num_train_tasks, self.num_eval_tasks = num_train_tasks, num_eval_tasks
        self.learner = learner
        self.metrics = MetricStream(self.run_dir, "metrics", cfg.run.metric_sinks)
        self.evals = MetricStream(self.run_dir, "eval", cfg.run.metric_sinks)
        self.iteration = 0
        self.overlap = None  # run.overlap: an OverlappedSampler (training/overlap.py), set by from_config

    @classmethod
    def from_config(cls, cfg: RunConfig, run_dir: Path, model_path: str, meta: dict) -> "Trainer":
        """Every part from the config: policy, then (rank 0) engine and runners, then the learner."""
        model, tokenizer, rollout_model = build_policy(cfg, model_path)
        engine, runners = None, (None, None, None, None)
        if distributed.is_main():
            engine = build_engine(cfg, rollout_model, tokenizer)
            runners = build_runners(cfg, engine, tokenizer)
        train_runner, eval_runner, num_train_tasks, num_eval_tasks = runners
        try:
            learner = build_learner(cfg, model)
        except BaseException:
            for runner in (train_runner, eval_runner):
                if runner is not None:
                    runner.close()
            raise
        trainer = cls(
            cfg,
            run_dir,
            model=model,
            tokenizer=tokenizer,
            rollout_model=rollout_model,
            engine=engine,
            train_runner=train_runner,
            eval_runner=eval_runner,
            num_train_tasks=num_train_tasks,
            num_eval_tasks=num_eval_tasks,
            learner=learner,
            meta=meta,
        )
        if cfg.run.overlap:
            trainer.overlap = OverlappedSampler(cfg, model_path, rollout_model)
        return trainer

    # ------------------------------------------------------------------ state
    def restore(self, loaded: tuple[dict, dict]) -> None:
        """From `load_trainer_state(ckpt)`: (state.json, trainer.pt)."""
        state, trainer = loaded
        self.learner.load_state_dict(trainer["learner"])
        set_rng_state(trainer["rng"])
        self.iteration = state["iteration"]
        if self.overlap is not None:
            self.overlap.load_state_dict(trainer.get("overlap"))
        if self.main:
            self.metrics.truncate_after(self.iteration - 1)
            self.evals.truncate_after(self.iteration)

    def checkpoint(self) -> Path | None:
        """Every rank gathers (collective); rank 0 writes the full, unsharded state."""
        learner_state = self.learner.state_dict()
        path = None
        if self.main:
            extra = {"overlap": self.overlap.state_dict()} if self.overlap is not None else {}
            path = save_checkpoint(
                self.run_dir,
                self.iteration,
                self.rollout_model,
                self.tokenizer,
                {"learner": learner_state, **extra},
                {"meta": self.meta},
            )
        distributed.barrier()
        return path

    def sync_weights(self) -> None:
        """The engine gets the updated weights (under torchrun: gathered into rank 0's plain copy)."""
        if distributed.active():
            distributed.copy_full_weights(self.model, self.rollout_model)
        if self.main:
            self.engine.sync_weights(self.rollout_model)

    # ------------------------------------------------------------------ phases
    def run_eval(self) -> dict:
        if not self.main:
            return {}
        result = evaluate_suite(self.eval_runner, self.num_eval_tasks, self.cfg)
        row = {"iteration": self.iteration, **result}
        self.evals.append(row)
        log.info(eval_line(self.iteration, result, self.cfg.task.eval_samples))
        return row

    def collect(self):
        return collect_episodes(self.cfg, self.train_runner, self.iteration, self.num_train_tasks)

    def train_iteration(self) -> dict:
        t0 = time.perf_counter()
        if self.overlap is not None:  # run.overlap: this batch was sampled during the previous update
            row = self.overlap.iteration(self)
        else:
            row, batch = self.rollouts() if self.main else ({}, None)
            batch = distributed.broadcast_object(batch)
            if batch is not None:
                row.update(self.learner.step(batch))
                self.sync_weights()
        self.iteration += 1
        if not self.main:
            return row
        row["time_iteration"] = time.perf_counter() - t0
        row["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; peak so far
        self.metrics.append(row)
        log.info(
            f"[iter {row['iteration']:3d}] reward {row['reward_mean']:.3f} success {row['success_rate']:.3f} "
            f"entropy {row.get('entropy', float('nan')):.3f} rollout {row['time_rollout']:.1f}s "
            f"learn {row.get('time_learn', 0.0):.1f}s"
        )
        return row

    def rollouts(self):
        """This iteration's episodes -> (metrics row, collated batch, or None if nothing to learn from)."""
        return self.batch_from(*self.collect())

    def batch_from(self, trajectories, stats, rounds):
        """Collected episodes -> (metrics row, collated batch, or None if nothing to learn from)."""
        rewards = np.array([t.reward for t in trajectories])
        row = {
            "iteration": self.iteration,
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "success_rate": float(np.mean([t.success for t in trajectories])),
            "episodes": len(trajectories),
            "resample_rounds": rounds,
            "turns_mean": float(np.mean([t.num_turns for t in trajectories])),
            "episode_tokens_mean": float(np.mean([len(t.token_ids) for t in trajectories])),
            "time_rollout": sum(s.wall_seconds for s in stats),
            "failed_episodes": sum(s.failed_episodes for s in stats),
            "rollout_tokens_per_s": sum(s.generated_tokens for s in stats)
            / max(sum(s.wall_seconds for s in stats), 1e-9),
        }
        for reason in sorted({t.termination for t in trajectories}):
            row[f"end_{reason}"] = sum(t.termination == reason for t in trajectories)
        trajectories = select_groups(trajectories, self.cfg.learner, self.cfg.task.tasks_per_iteration)
        row["groups_trained"] = len({t.group_id for t in trajectories})
        return row, (collate(trajectories, self.tokenizer.pad_token_id) if trajectories else None)

    def close(self) -> None:
        self.metrics.close()
        self.evals.close()
        if self.overlap is not None:
            self.overlap.close()
        if self.main:
            self.train_runner.close()
            self.eval_runner.close()

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            self.close()

    def _fit(self) -> dict:
        run = self.cfg.run
        if self.main and self.iteration == 0 and not self.evals.rows():
            self.run_eval()
        while self.iteration < run.iterations:
            self.train_iteration()
            if run.eval_every and self.iteration % run.eval_every == 0 and self.iteration < run.iterations:
                self.run_eval()
            if self.iteration % run.checkpoint_every == 0 or self.iteration == run.iterations:
                self.checkpoint()
        if not self.main:
            return {}
        done = self.evals.rows()
        final_eval = done[-1] if done and done[-1]["iteration"] == self.iteration else self.run_eval()
        return self.summarize(final_eval)

    def summarize(self, final_eval: dict) -> dict:
        from .plot import plot_runs

        plots = plot_runs([self.run_dir], self.run_dir / "plots")
        rows = self.metrics.rows()
        summary = {
            "run_dir": str(self.run_dir),
            "checkpoint": str(latest_checkpoint(self.run_dir)),
            "metrics": str(self.metrics.path),
            "eval": str(self.evals.path),
            "plots": [str(p) for p in plots],
            "iterations": self.iteration,
            "eval_success_start": self.evals.rows()[0]["eval_success"],
            "eval_success_final": final_eval["eval_success"],
            "time_rollout_mean": float(np.mean([r["time_rollout"] for r in rows])) if rows else None,
            "time_learn_mean": float(np.mean([r.get("time_learn", 0.0) for r in rows])) if rows else None,
        }
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        return summary


# ---------------------------------------------------------------------- entry points
def _new_run_dir(cfg: RunConfig) -> Path:
    run_dir = run_dir_for(cfg)
    check_run_dir_free(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _start(cfg: RunConfig, model_path: str, meta: dict) -> Trainer:
    run_dir = None
    if distributed.is_main():  # rank 0 names and writes the run directory; the others get its name
        run_dir = _new_run_dir(cfg)
        atomic_write_text(run_dir / "config.json", cfg.model_dump_json(indent=2))
        atomic_write_text(run_dir / "meta.json", json.dumps(meta, indent=2))
    run_dir = distributed.broadcast_object(run_dir)
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    return Trainer.from_config(cfg, run_dir, model_path, meta)


def train(cfg: RunConfig) -> dict:
    """A new run from the configured model (the embedded default when none is given)."""
    preflight(cfg)
    with distributed.main_first():  # rank 0 builds the embedded default's cache, the others find it
        model_path = resolve_model_path(cfg)
    return _start(cfg, model_path, {"model": model_path, "parent": None}).fit()


def saved_config(run_dir: str | Path) -> RunConfig:
    """The config a run directory was started with (its config.json)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: not a run directory (no config.json)")
    return RunConfig.model_validate_json(path.read_text())


def resume(run_dir: str | Path, iterations: int | None = None, trust_checkpoint: bool = False) -> dict:
    """Continue the same run exactly where its newest intact checkpoint left it (`trust_checkpoint`: also
    from a trainer.pt that needs the full unpickler, see checkpoint.py)."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    if iterations is not None:
        cfg = updated(cfg, {"run.iterations": iterations})
    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no meta.json (the run was killed while starting); start it again")
    meta = json.loads(meta_path.read_text())
    found: tuple = (None, None)
    if distributed.is_main():  # rank 0 checks and tidies; every rank gets the choice (or the error)
        try:
            found = (resumable_checkpoint(run_dir), None)
        except CheckpointError as err:
            found = (None, str(err))
    ckpt, error = distributed.broadcast_object(found)
    if error:
        raise CheckpointError(error)
    if distributed.is_main() and iterations is not None and iterations != saved_config(run_dir).run.iterations:
        # the run's own record follows the extension, so a later plain `--resume` keeps the new length
        log.info(f"run.iterations: {saved_config(run_dir).run.iterations} -> {iterations} (config.json updated)")
        atomic_write_text(run_dir / "config.json", cfg.model_dump_json(indent=2))
    if ckpt is None:  # killed before its first checkpoint: start over in place (the same rows come again)
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        trainer = Trainer.from_config(cfg, run_dir, meta["model"], meta)
        if trainer.main:
            trainer.metrics.truncate_after(-1)
            trainer.evals.truncate_after(0)
        log.info(f"resumed {run_dir} at iteration 0: no checkpoint was written yet")
    else:
        loaded = load_trainer_state(ckpt, trust_checkpoint)  # before building anything: a refused file costs nothing
        trainer = Trainer.from_config(cfg, run_dir, str(ckpt / "model"), meta)
        trainer.restore(loaded)
        log.info(f"resumed {run_dir} at iteration {trainer.iteration} from {ckpt.name}")
    return trainer.fit()


def continue_from(checkpoint: str | Path, cfg: RunConfig, trust_checkpoint: bool = False) -> dict:
    """A new run on `cfg.task` from a checkpoint's weights. The entropy target H*: the parent's (default),
    the one set in `target_entropy`, or, with `target_entropy: remeasure`, measured again on the new domain."""
    preflight(cfg)
    ckpt = resolve_checkpoint(checkpoint)
    _, trainer_state = load_trainer_state(ckpt, trust_checkpoint)
    parent_target = trainer_state["learner"]["controller"].get("target_entropy")
    ec = cfg.learner.entropy_control
    source = "remeasured" if ec.target_entropy == "remeasure" else "set" if ec.target_entropy is not None else "parent"
    if ec.target_entropy is None and parent_target is not None:
        cfg = updated(cfg, {"learner.entropy_control.target_entropy": parent_target})  # the caller's cfg is kept
    meta = {
        "model": str(ckpt / "model"),
        "parent": str(ckpt.resolve()),
        "parent_run": str(ckpt.parent.parent.resolve()),
        "parent_target_entropy": parent_target,
        "target_entropy_source": source,
        "inherited_target_entropy": None if source == "remeasured" else cfg.learner.entropy_control.target_entropy,
    }
    return _start(cfg, str(ckpt / "model"), meta).fit()
