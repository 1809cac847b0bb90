"""Overlapped rollout and learning (`run.overlap: true`): one-step off-policy, as AReaL, PipelineRL and
verl's one-step-off-policy trainer do. docs/algorithms.md, "Overlapped rollout and learning".

B_k = iteration k's batch, theta_k = the weights after k updates:

    learner  (this process)   :            [learn B_0: th0->th1] [learn B_1: th1->th2] [learn B_2 ...
    sampler  (second process) : [B_0 | th0] [B_1 | th0          ] [B_2 | th1          ] [B_3 | th2 ...

B_0 is sampled before any update (policy_lag 0). From then on B_{k+1} is sampled with theta_k while
the learner turns theta_k into theta_{k+1}: every batch is learned exactly one update after the
weights that sampled it (policy_lag 1), never more, as each side waits for the other once per
iteration. An iteration costs max(rollout, learn) instead of rollout + learn.

Correction: logp_old = the sampler's own log-probs (behaviour policy, `old_logprobs: inference`,
derived by the config under overlap), so r = pi_theta_k / pi_theta_{k-1} and the clip bounds the
staleness; or, with `tis_cap`, decoupled PPO: clip against the recomputed theta_k, weighted by
min(pi_theta_k / pi_theta_{k-1}, tis_cap). Logged per iteration: `policy_lag` and
`mismatch_logp_abs_mean` = mean |logp_sampler - logp_theta_k| over action tokens (with `approx_kl`,
`ratio_mean`, `ratio_max` of the loss).

Why a process and not a thread: determinism. A sampler thread and the learner would draw from the one
global torch generator (the sampler's multinomial, the learner's randperm) in an order set by the OS
scheduler, which breaks bit-exact resume (HF's sampling takes no generator). Speed does not decide it:
torch.profiler puts 89% (tiny default) / 95% (SmolLM2-135M) of a rollout's and 99% of a learner step's
wall time inside torch ops, which release the GIL. Measured on the idle 2-core machine
(bench/results/overlap.md, overlap_smollm2.md), one rollout and one learner step at once: tiny 1.42 s in
a thread and 1.47 s in the process against max(rollout, learn) = 1.48 s; SmolLM2 LoRA 13.3 s / 13.5 s
against 13.1 s. Whole runs: 0.62x (tiny) and 0.60x (SmolLM2) the synchronous seconds per iteration.

The process holds its own copy of the policy, built like the learner's from the same
path; after each update the learner copies its *trainable* parameters (LoRA: the adapter alone) into
shared-memory tensors that the sampler loads before its next rollout (a few MB; no pickling). The
sampler reseeds torch, numpy and random from (run.seed, iteration) before every rollout, so its
batches depend on the weights and the iteration only. Each side runs `run.threads` torch threads
(default under overlap: half the cores each).

Resume: a checkpoint written after iteration k holds B_{k+1} (already sampled from theta_k, the
weights before the checkpoint's) in trainer.pt, which the atomic checkpoint write covers; a resumed
run learns it next, then samples B_{k+2} from the checkpoint's weights, exactly as the uninterrupted
run. The sampler always samples one batch ahead, also after the last iteration, so a finished run
extended with `--resume --iterations N` continues as an N-iteration run would have.

Not supported (refused in one line): torchrun (rank 0 samples from a gathered copy in step with the
sharded update), engines other than `hf`.
"""

from __future__ import annotations

import atexit
import os
import pickle
import random
import time
import traceback
from dataclasses import asdict

import numpy as np
import torch
import torch.multiprocessing as mp

from eprl.agents.rollout import RolloutStats
from eprl.agents.trajectory import Trajectory

from . import distributed
from .checkpoint import plain
from .config import ConfigError, RunConfig


def pending_state(pending: dict | None) -> dict | None:
    """The pending batch as plain data for trainer.pt (dataclasses as dicts; env `info` values that are
    not plain data as their repr: the learner reads only token ids, masks, log-probs and rewards)."""
    if pending is None:
        return None
    trajectories = [
        {
            **plain({k: v for k, v in asdict(t).items() if k != "info"}, "pending trajectory"),
            "info": plain(t.info, "trajectory info", lossy=True),
        }
        for t in pending["trajectories"]
    ]
    stats = [plain(asdict(s), "pending rollout stats", lossy=True) for s in pending["stats"]]
    return {**pending, "trajectories": trajectories, "stats": stats}


def pending_from_state(state: dict | None) -> dict | None:
    if state is None:
        return None
    trajectories = [
        t if isinstance(t, Trajectory) else Trajectory(**t) for t in state["trajectories"]
    ]  # Trajectory objects: a trusted checkpoint written before plain-data checkpoints
    stats = [s if isinstance(s, RolloutStats) else RolloutStats(**s) for s in state["stats"]]
    return {**state, "trajectories": trajectories, "stats": stats}


def check_overlap(cfg: RunConfig) -> None:
    """Refuse run.overlap where it is not supported (the config itself refuses the rest)."""
    if cfg.run.overlap and distributed.active():
        raise ConfigError(
            "run.overlap under torchrun: not supported (rank 0 samples from a gathered copy in step "
            "with the sharded update); drop run.overlap or run in one process"
        )


def overlap_threads(cfg: RunConfig) -> int:
    """Torch threads of each side: run.threads, else half the cores (the two sides run at once)."""
    return cfg.run.threads or max(1, (os.cpu_count() or 2) // 2)


def sampler_seed(seed: int, iteration: int) -> int:
    """The sampler's torch/numpy/random seed for one iteration's rollout."""
    return int(np.random.SeedSequence([seed, iteration, 0x0E]).generate_state(1)[0])


def _trainable(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _sampler_main(conn, cfg_json: str, model_path: str, shared: dict[str, torch.Tensor]) -> None:
    """The sampler process: its own policy copy, engine and train runner; one rollout per request."""
    try:
        from .builders import build_engine, build_policy, build_runner
        from .collect import collect_episodes

        cfg = RunConfig.model_validate_json(cfg_json)
        torch.set_num_threads(overlap_threads(cfg))
        model, tokenizer, _ = build_policy(cfg, model_path)
        params = _trainable(model)
        if params.keys() != shared.keys():
            raise RuntimeError(
                f"overlap sampler: its trainable parameters differ from the learner's "
                f"({sorted(params.keys() ^ shared.keys())[:3]}...)"
            )
        runner, num_tasks = build_runner(cfg, "train", build_engine(cfg, model, tokenizer), tokenizer)
    except BaseException as err:  # noqa: BLE001  (reported to the learner, which raises it)
        _send_error(conn, err)
        return
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the learner is gone (killed): stop
                return
            if request[0] == "close":
                return
            iteration = request[1]
            try:
                with torch.no_grad():
                    for name, p in params.items():
                        p.copy_(shared[name])
                seed = sampler_seed(cfg.run.seed, iteration)
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                random.seed(seed)
                conn.send(("ok", collect_episodes(cfg, runner, iteration, num_tasks)))
            except (BrokenPipeError, EOFError):
                return
            except BaseException as err:  # noqa: BLE001
                _send_error(conn, err)
    finally:
        runner.close()


def _send_error(conn, err: BaseException) -> None:
    text = "".join(traceback.format_exception(err))
    try:
        pickle.dumps(err)
        payload: BaseException | None = err
    except Exception:  # noqa: BLE001
        payload = None
    try:
        conn.send(("error", payload, text))
    except (BrokenPipeError, EOFError):
        pass


class OverlappedSampler:
    """The learner's side: weights out through shared memory, one rollout request at a time."""

    def __init__(self, cfg: RunConfig, model_path: str, model):
        check_overlap(cfg)
        self.cfg = cfg
        torch.set_num_threads(overlap_threads(cfg))
        self.params = _trainable(model)
        self.shared = {n: p.detach().to("cpu", copy=True).share_memory_() for n, p in self.params.items()}
        ctx = mp.get_context("spawn")  # not fork: the parent's OpenMP pool and threads do not survive a fork
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_sampler_main,
            args=(child, cfg.model_dump_json(), model_path, self.shared),
            name="eprl-overlap-sampler",
        )  # not daemonic: envs start processes (math-verify)
        self.process.start()
        child.close()
        atexit.register(self.close)  # runs before multiprocessing joins its children: an error path cannot hang
        self.pending: dict | None = None  # the batch sampled for the next iteration (checkpointed)
        self.in_flight: tuple[int, int] | None = None  # (iteration, policy lag) of the request being sampled

    # ------------------------------------------------------------------ protocol
    def request(self, iteration: int, lag: int) -> None:
        """Sample `iteration`'s batch from the weights the learner has now (the sampler is idle)."""
        assert self.in_flight is None, "one request at a time"
        with torch.no_grad():
            for name, p in self.params.items():
                self.shared[name].copy_(p.detach())
        try:
            self.conn.send(("collect", iteration))
        except (BrokenPipeError, OSError):
            self.process.join(timeout=5)
            raise RuntimeError(f"overlap sampler process died (exit code {self.process.exitcode})") from None
        self.in_flight = (iteration, lag)

    def receive(self) -> dict:
        """Wait for the request in flight: {iteration, lag, trajectories, stats, rounds}."""
        assert self.in_flight is not None
        iteration, lag = self.in_flight
        try:
            reply = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"overlap sampler process died (exit code {self.process.exitcode})") from None
        self.in_flight = None
        if reply[0] == "error":
            _, err, text = reply
            if err is not None:
                raise err
            raise RuntimeError(f"overlap sampler failed:\n{text}")
        trajectories, stats, rounds = reply[1]
        return {"iteration": iteration, "lag": lag, "trajectories": trajectories, "stats": stats, "rounds": rounds}

    # ------------------------------------------------------------------ one iteration
    def iteration(self, trainer) -> dict:
        """Learn iteration k's batch (sampled from theta_{k-1}) while the sampler samples B_{k+1} from theta_k."""
        k = trainer.iteration
        if self.pending is None or self.pending["iteration"] != k:  # first iteration: nothing was sampled ahead
            self.request(k, lag=0)
            self.pending = self.receive()
        done, self.pending = self.pending, None
        self.request(k + 1, lag=1)  # from theta_k, before the update below changes it
        row, batch = trainer.batch_from(done["trajectories"], done["stats"], done["rounds"])
        if batch is not None:
            row.update(trainer.learner.step(batch))
            trainer.sync_weights()
        t0 = time.perf_counter()
        self.pending = self.receive()
        row.update(policy_lag=done["lag"], time_sampler_wait=time.perf_counter() - t0)
        return row

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"pending": pending_state(self.pending)}

    def load_state_dict(self, state: dict | None) -> None:
        self.pending = pending_from_state((state or {}).get("pending"))

    def close(self) -> None:
        """Stop the sampler: asked to when idle; mid-rollout, its next send finds the pipe closed."""
        atexit.unregister(self.close)
        if self.conn.closed:
            return
        try:
            if self.in_flight is None and self.process.is_alive():
                self.conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self.conn.close()
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
