"""Shared by tests that drive `python -m eprl.training` in subprocesses: cheap settings, the command, a run that must pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Small enough for a 2-core CPU: a 30-step warm-start, 3 tasks x 2 samples, short turns, one thread.
SMALL = [
    "model.tiny_sft_steps=30",
    "task.group_size=2",
    "task.tasks_per_iteration=3",
    "task.eval.num_tasks=3",
    "task.eval_samples=1",
    "task.sampling.max_new_tokens=12",
    "task.eval_sampling.max_new_tokens=12",
    "run.threads=1",
    "run.progress=false",
    "learner.lr=1e-3",
]


def train_cmd(sets: list[str], task: str = "default.yaml") -> list[str]:
    """`python -m eprl.training train --task tasks/<task> --set ...` for each of `sets`."""
    return [
        sys.executable,
        "-m",
        "eprl.training",
        "train",
        "--task",
        str(REPO / "tasks" / task),
        *[a for s in sets for a in ("--set", s)],
    ]


def continue_cmd(
    checkpoint, settings: list[str], out: Path, iterations: int, task: str = "arith_hard.yaml"
) -> list[str]:
    """`python -m eprl.training continue CHECKPOINT --task tasks/<task>` into run `out/child`, with `settings`'
    non-task fields and a small second suite (2 tasks x 2 samples)."""
    sets = [s for s in settings if not s.startswith("task.")] + [
        "task.group_size=2",
        "task.tasks_per_iteration=2",
        "task.eval.num_tasks=2",
        "task.eval_samples=1",
        f"run.out_dir={out}",
        "run.name=child",
        f"run.iterations={iterations}",
    ]
    return [
        sys.executable,
        "-m",
        "eprl.training",
        "continue",
        str(checkpoint),
        "--task",
        str(REPO / "tasks" / task),
        *[a for s in sets for a in ("--set", s)],
    ]


def run_ok(cmd, **kw) -> subprocess.CompletedProcess:
    """Run `cmd`; fail the test with the tail of its stderr unless it exits 0."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def torchrun_ok(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N ARGS` from the repo root, one thread per rank, the repo
    prepended to PYTHONPATH (packages found through it stay found); fail unless it exits 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def kill_at_checkpoint(proc: subprocess.Popen, run_dir: Path, checkpoint: str, timeout: float = 300) -> None:
    """SIGKILL a training process as soon as `run_dir`'s latest checkpoint is `checkpoint` (e.g. iter_000002);
    fails if the process exits first or no such checkpoint appears in time. The run must not have finished."""
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + timeout
    while not (latest.exists() and latest.read_text().strip() == checkpoint):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else "the run exited"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it was killed"


def write_trainer_pt(ckpt: Path, state: dict) -> None:
    """Replace a checkpoint's trainer.pt with a full pickle of `state` and fix the manifest to match, as an older
    eprl (or an attacker rewriting both) would leave it: every size check passes, only the loader can refuse."""
    import json

    import torch

    torch.save(state, ckpt / "trainer.pt")
    manifest = json.loads((ckpt / "state.json").read_text())
    manifest["files"]["trainer.pt"] = (ckpt / "trainer.pt").stat().st_size
    (ckpt / "state.json").write_text(json.dumps(manifest))
