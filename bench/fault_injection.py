"""Fault injection: SIGKILL a small training run at random points, resume it, compare bit-exactly.

One uninterrupted reference run (4 iterations, a checkpoint after each, an evaluation after
iteration 2 and at the end), then N runs of the same command, each killed with SIGKILL at a
seeded random point and resumed with `eprl train --resume` until it finishes. Kill points, in turn:
  time        a uniform delay over the reference's wall time (model loading, rollouts, updates, ...)
  checkpoint  while a checkpoint is being written (its .iter_*.tmp* directory exists)
  eval        during an evaluation (after the log line of the iteration it follows, or after the
              last checkpoint, during the final evaluation)
A resumed run passes when its metrics.jsonl and eval.jsonl rows (timings aside), final weights and
optimizer state equal the reference's exactly. Writes bench/results/fault_injection.{json,md}.

    python bench/fault_injection.py [--kills 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]

from cli_runs import SMALL  # noqa: E402

SETTINGS = SMALL + ["learner.entropy_coef=0.01", "run.iterations=4", "run.checkpoint_every=1", "run.eval_every=2"]
MODES = ("time", "checkpoint", "eval")


def train_cmd(cache: Path, out: Path, name: str) -> list[str]:
    sets = SETTINGS + [f"model.cache_dir={cache}", f"run.out_dir={out}", f"run.name={name}"]
    return [
        sys.executable,
        "-m",
        "eprl.training",
        "train",
        "--task",
        str(REPO / "tasks" / "default.yaml"),
        *[a for s in sets for a in ("--set", s)],
    ]


def _env() -> dict:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # log lines mark eval


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {k: v for k, v in r.items() if not k.startswith("time") and not k.endswith(("_per_s", "_seconds"))}
        for r in rows
    ]


def fingerprint(run: Path) -> dict:
    """What must be identical: metrics and eval rows, final weights, final optimizer state."""
    import torch
    from safetensors.torch import load_file

    ckpt = run / "checkpoints" / "iter_000004"
    trainer = torch.load(ckpt / "trainer.pt", weights_only=True)  # plain data (training/checkpoint.py)
    return {
        "metrics": _rows(run / "metrics.jsonl"),
        "eval": _rows(run / "eval.jsonl"),
        "weights": load_file(str(ckpt / "model" / "model.safetensors")),
        "optimizer": trainer["learner"]["optimizer"],
    }


def same(a: dict, b: dict) -> dict[str, bool]:
    import torch

    def equal(x, y) -> bool:
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):  # a loaded optimizer keeps betas as a list, a fresh one as a tuple
            return isinstance(y, (list, tuple)) and len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y))
        return x == y

    return {k: equal(a[k], b[k]) for k in a}


def _wait_for_kill_point(
    proc, run: Path, log: Path, mode: str, delay: float, rng: random.Random, deadline: float
) -> str:
    """Block until the kill point; returns what it hit ('' if the run ended first)."""
    start = time.time()
    ckpts = run / "checkpoints"
    target_iter = rng.choice([1, 2, 3, 4])  # which checkpoint write, or which evaluation
    while proc.poll() is None and time.time() < deadline:
        if mode == "time" and time.time() - start >= delay:
            return f"t={delay:.2f}s"
        if (
            mode == "checkpoint"
            and ckpts.is_dir()
            and any(p.name.startswith(f".iter_{target_iter:06d}.tmp") for p in ckpts.iterdir())
        ):
            time.sleep(delay)  # somewhere inside the write
            return f"writing iter_{target_iter:06d} (+{delay * 1000:.0f} ms)"
        if mode == "eval":
            text = log.read_text() if log.is_file() else ""
            if target_iter in (1, 2) and "[iter   1]" in text:  # the evaluation after iteration 2
                time.sleep(delay)
                return f"eval after iteration 2 (+{delay * 1000:.0f} ms)"
            latest = ckpts / "latest"
            if target_iter in (3, 4) and latest.is_file() and latest.read_text().strip() == "iter_000004":
                time.sleep(delay)
                return f"final eval (+{delay * 1000:.0f} ms)"
        time.sleep(0.002)
    return ""


def one_kill(
    k: int, mode: str, rng: random.Random, cache: Path, out: Path, ref_seconds: float, reference: dict
) -> dict:
    name = f"kill{k:02d}"
    run = out / name
    log = out / f"{name}.log"
    t0, span, attempts = time.time(), ref_seconds, 0
    while True:  # a run that ends before its kill point (a shared CPU runs faster or slower) is drawn again, shorter
        attempts += 1
        shutil.rmtree(run, ignore_errors=True)
        delay = (
            rng.uniform(0.0, 0.75 * span) if mode == "time" else rng.uniform(0.0, 0.05 if mode == "checkpoint" else 0.3)
        )
        started = time.time()
        with open(log, "w") as fh:
            proc = subprocess.Popen(
                train_cmd(cache, out, name), stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=REPO
            )
            hit = _wait_for_kill_point(proc, run, log, mode, delay, rng, deadline=time.time() + 900)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if killed or attempts >= 3:
            break
        span = min(span, time.time() - started)
    ckpts = run / "checkpoints"
    on_disk = {
        "latest": (ckpts / "latest").read_text().strip() if (ckpts / "latest").is_file() else None,
        "partial_write": sorted(p.name for p in ckpts.iterdir() if p.name.startswith(".")) if ckpts.is_dir() else [],
        "metrics_rows": len(_rows(run / "metrics.jsonl")),
        "finished": (run / "summary.json").is_file(),
    }
    resumes, notes = 0, []
    while not (run / "summary.json").is_file() and resumes < 3:
        resumes += 1
        # killed before the run directory was complete: what a user does is start it again
        again = not (run / "meta.json").is_file()
        cmd = (
            train_cmd(cache, out, name)
            if again
            else [sys.executable, "-m", "eprl.training", "train", "--resume", str(run)]
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900)
        notes += [ln for ln in proc.stdout.splitlines() if ln.startswith(("removed", "skipping", "resumed"))]
        if proc.returncode != 0:
            notes.append(
                f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}"
            )
            break
        notes.append("started again (no meta.json yet)" if again else "")
    equal = same(fingerprint(run), reference) if (run / "summary.json").is_file() else {}
    result = {
        "kill": k,
        "mode": mode,
        "hit": hit or "(run ended first)",
        "killed": killed,
        "attempts": attempts,
        "on_disk_at_kill": on_disk,
        "resumes": resumes,
        "notes": [n for n in notes if n],
        "equal": equal,
        "bit_exact": bool(equal) and all(equal.values()),
        "seconds": round(time.time() - t0, 1),
    }
    shutil.rmtree(run, ignore_errors=True)
    return result


def reference_run(cache: Path, out: Path) -> tuple[dict, float]:
    t0 = time.time()
    proc = subprocess.run(
        train_cmd(cache, out, "reference"), capture_output=True, text=True, env=_env(), cwd=REPO, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return fingerprint(out / "reference"), time.time() - t0


def run_kills(kills: int, seed: int, cache: Path, out: Path, progress=print) -> dict:
    """The reference, then `kills` kill-and-resume runs cycling through MODES."""
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        train_cmd(cache, out, "warm") + ["--set", "run.iterations=0"],
        capture_output=True,
        env=_env(),
        cwd=REPO,
        timeout=1800,
        check=True,
    )  # builds the cached warm start once, outside the timings
    reference, ref_seconds = reference_run(cache, out)
    progress(f"reference: {ref_seconds:.1f}s")
    rng = random.Random(seed)
    results = []
    for k in range(kills):
        r = one_kill(k, MODES[k % len(MODES)], rng, cache, out, ref_seconds, reference)
        progress(
            f"[{k + 1}/{kills}] {r['mode']:10s} {r['hit']:40s} latest={r['on_disk_at_kill']['latest']} "
            f"partial={r['on_disk_at_kill']['partial_write']} -> bit_exact={r['bit_exact']} {'; '.join(r['notes'])}"
        )
        results.append(r)
    return {"reference_seconds": round(ref_seconds, 1), "settings": SETTINGS, "seed": seed, "runs": results}


def markdown(result: dict, machine: dict) -> str:
    runs = result["runs"]
    for r in runs:  # the runs lived in a temporary directory
        r["notes"] = [re.sub(r"/\S+/(kill\d+)", r"RUN", n) for n in r["notes"]]
    lines = [
        "# Fault injection (fault_injection)",
        "",
        f"> {sum(r['bit_exact'] for r in runs)} of {len(runs)} runs killed with SIGKILL and resumed ended bit-identical to "
        "the uninterrupted run (metrics.jsonl and eval.jsonl rows without timings, final weights, final optimizer state).",
        "",
        f"Settings: `{' '.join(result['settings'])}` on the embedded tiny default; reference run {result['reference_seconds']} s; "
        f"kill points drawn with seed {result['seed']}.",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores (shared), torch {machine['torch']}, {machine['date']}.",
        "",
        "| mode | runs | killed | partial write left at kill | fell back past a checkpoint | bit-exact |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        lines.append(
            f"| {mode} | {len(rs)} | {sum(r['killed'] for r in rs)} | {sum(bool(r['on_disk_at_kill']['partial_write']) for r in rs)} "
            f"| {sum(any(n.startswith('skipping') for n in r['notes']) for r in rs)} | {sum(r['bit_exact'] for r in rs)}/{len(rs)} |"
        )
    lines += [
        "",
        "| # | mode | kill point | latest at kill | partial write | rows at kill | resume | bit-exact |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        d = r["on_disk_at_kill"]
        lines.append(
            f"| {r['kill']} | {r['mode']} | {r['hit']} | {d['latest']} | {', '.join(d['partial_write']) or '-'} | "
            f"{d['metrics_rows']} | {'; '.join(r['notes']) or '-'} | {r['bit_exact']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench_io import machine, write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=None, help="model cache dir (default: a temporary one)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the recorded .json")
    args = ap.parse_args()
    stem = REPO / "bench" / "results" / "fault_injection"
    if args.markdown_only:
        result = json.loads(stem.with_suffix(".json").read_text())
        write_results(stem, result, markdown(result, result["machine"]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        result = run_kills(args.kills, args.seed, cache, Path(tmp) / "runs", progress=lambda s: print(s, flush=True))
    info = machine()
    result["machine"] = info
    write_results(stem, result, markdown(result, info))
    print(markdown(result, info))


if __name__ == "__main__":
    main()
