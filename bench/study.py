"""The entropy study on a real pretrained LM: plan, run (resumably, in parallel), summarise, report.

    python bench/study.py plan   bench/study_smollm2.yaml             # every run and its state
    python bench/study.py run    bench/study_smollm2.yaml --jobs 2    # start / resume what is not done
    python bench/study.py report bench/study_smollm2.yaml             # report + plots from the summaries

A spec names a base model and overrides, domain A and B task suites and a list of methods (overrides and
seeds). Runs are of three kinds:
- `A/<method>/s<seed>`: domain A from the base model;
- `B/<method>/s<seed>`: domain B continued (`eprl continue`) from that run's final checkpoint (fresh optimizer);
- `B/base/s<seed>`: domain B from the base model, the reference for "learns B faster".
Every run is one `python -m eprl.training` subprocess (one torch thread) in `work_dir/<run id>`. A run whose
summary is in `results_dir/runs/` is done and never rerun; a run directory with a checkpoint is resumed
bit-exactly with `train --resume`; anything else starts fresh. When a run ends, its summary (config
overrides, per-iteration metrics, evaluations, wall time, machine, code version) is written atomically
to `results_dir/runs/<run id>.json`: commit those. `report` reads only those files (seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import atomic_write, machine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    id: str  # "A/grpo/s0"
    domain: str  # "A" | "B"
    method: str
    seed: int
    task: Path
    sets: list[str]
    parent: str | None = None  # run id whose final checkpoint this run continues
    needs: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        return self.id.replace("/", "__")


def load_spec(path: str | Path) -> dict:
    spec = yaml.safe_load(Path(path).read_text())
    for key in ("name", "base_sets", "domain_a", "domain_b", "methods"):
        if key not in spec:
            raise SystemExit(f"study spec {path}: missing '{key}'")
    spec.setdefault("work_dir", f"runs/study-{spec['name']}")
    spec.setdefault("results_dir", f"bench/results/study_{spec['name']}")
    return spec


def plan(spec: dict) -> list[Run]:
    """Every run the spec asks for, in the order they should start (A before the B runs that need them)."""
    base = list(spec["base_sets"])
    a_sets = base + list(spec["domain_a"].get("sets", []))
    b_sets = base + list(spec["domain_b"].get("sets", []))
    task_a, task_b = REPO / spec["domain_a"]["task"], REPO / spec["domain_b"]["task"]
    runs: list[Run] = []
    max_seeds = max(len(m["seeds"]) for m in spec["methods"].values())
    for rank in range(max_seeds):  # seed-major: every method's first seed before any second seed
        for name, method in spec["methods"].items():
            if rank < len(method["seeds"]):
                seed = method["seeds"][rank]
                runs.append(
                    Run(
                        f"A/{name}/s{seed}",
                        "A",
                        name,
                        seed,
                        task_a,
                        a_sets + list(method.get("sets", [])) + [f"run.seed={seed}"],
                    )
                )
    for seed in spec["domain_b"].get("base_seeds", []):
        runs.append(Run(f"B/base/s{seed}", "B", "base", seed, task_b, b_sets + [f"run.seed={seed}"]))
    for name in spec["domain_b"].get("continue", []):
        method = spec["methods"][name]
        for seed in spec["domain_b"].get("continue_seeds", [method["seeds"][0]]):
            if seed in method["seeds"]:
                parent = f"A/{name}/s{seed}"
                runs.append(
                    Run(
                        f"B/{name}/s{seed}",
                        "B",
                        name,
                        seed,
                        task_b,
                        b_sets + list(method.get("sets", [])) + [f"run.seed={seed}"],
                        parent,
                        [parent],
                    )
                )
    order = spec.get("order", [])  # run-id prefixes, most urgent first; the rest keep the order above
    rank = lambda r: next((i for i, prefix in enumerate(order) if r.id.startswith(prefix)), len(order))  # noqa: E731
    return sorted(runs, key=rank)


# ----------------------------------------------------------------------------- state
def summary_path(spec: dict, run: Run) -> Path:
    return REPO / spec["results_dir"] / "runs" / f"{run.slug}.json"


def run_dir(spec: dict, run: Run) -> Path:
    return Path(spec["work_dir"]).resolve() / run.slug


def has_checkpoint(spec: dict, run: Run) -> bool:
    return (run_dir(spec, run) / "checkpoints" / "latest").is_file()


def dir_state(spec: dict, run: Run) -> str:
    """What the run directory allows: resume from a checkpoint, start fresh, or restart (no checkpoint yet)."""
    if has_checkpoint(spec, run):
        return "resumable"
    return "fresh" if not run_dir(spec, run).exists() else "restart"


def state(spec: dict, run: Run) -> str:
    return "done" if summary_path(spec, run).is_file() else dir_state(spec, run)


def command(spec: dict, run: Run) -> list[str]:
    rd = run_dir(spec, run)
    if dir_state(spec, run) == "resumable":
        return [sys.executable, "-m", "eprl.training", "train", "--resume", str(rd)]
    sets = run.sets + [f"run.out_dir={rd.parent}", f"run.name={rd.name}", "run.progress=false", "run.threads=1"]
    args = [a for s in sets for a in ("--set", s)]
    if run.parent:
        parent_dir = run_dir(spec, next(r for r in plan(spec) if r.id == run.parent))
        return [sys.executable, "-m", "eprl.training", "continue", str(parent_dir), "--task", str(run.task), *args]
    return [sys.executable, "-m", "eprl.training", "train", "--task", str(run.task), *args]


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def summarize(spec: dict, run: Run, wall_seconds: float) -> dict:
    rd = run_dir(spec, run)
    read = lambda name: [json.loads(x) for x in (rd / name).read_text().splitlines() if x.strip()]  # noqa: E731
    meta = json.loads((rd / "meta.json").read_text())
    return {
        "id": run.id,
        "domain": run.domain,
        "method": run.method,
        "seed": run.seed,
        "task": str(run.task.relative_to(REPO)),
        "overrides": run.sets,
        "parent": run.parent,
        "inherited_target_entropy": meta.get("inherited_target_entropy"),
        "metrics": read("metrics.jsonl"),
        "eval": read("eval.jsonl"),
        "wall_seconds_last_sitting": wall_seconds,
        "machine": machine(),
        "code": git_commit(),
    }


def execute(spec: dict, run: Run) -> tuple[Run, int, float]:
    rd = run_dir(spec, run)
    if dir_state(spec, run) == "restart":  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(rd)
    rd.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(spec, run)
    t0 = time.time()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    with open(rd.parent / f"{rd.name}.log", "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.time() - t0
    if code == 0 and not summary_path(spec, run).is_file():  # a rebuilt parent keeps its committed summary
        atomic_write(summary_path(spec, run), json.dumps(summarize(spec, run, seconds), indent=1))
    return run, code, seconds


def with_parents(spec: dict, todo: list[Run]) -> list[Run]:
    """`todo` plus, before each B run, its A parent when that run is done (summary committed) but its
    checkpoints are gone (run directories do not travel between machines): the parent is trained again
    (same seed and settings) to give the B run its starting weights; its summary is left as committed."""
    by_id = {r.id: r for r in plan(spec)}
    out: list[Run] = []
    for run in todo:
        for parent in (by_id[n] for n in run.needs):
            if state(spec, parent) == "done" and not has_checkpoint(spec, parent) and parent not in out:
                out.append(parent)
        if run not in out:
            out.append(run)
    return out


def run_all(spec: dict, jobs: int, only: list[str] | None = None, limit: int | None = None) -> int:
    """Start or resume every run not done, `jobs` at a time; B runs wait for their A parent."""
    todo = [r for r in plan(spec) if state(spec, r) != "done" and (not only or any(r.id.startswith(o) for o in only))]
    todo = with_parents(spec, todo[:limit] if limit else todo)
    by_id = {r.id: r for r in plan(spec)}
    failed: set[str] = set()
    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[cf.Future, Run] = {}
        while todo or running:
            ready = [
                r
                for r in todo
                if all(
                    state(spec, by_id[n]) == "done" and has_checkpoint(spec, by_id[n]) and by_id[n] not in todo
                    for n in r.needs
                )
            ]
            blocked = [r for r in todo if any(n in failed for n in r.needs)]
            for r in blocked:
                todo.remove(r)
                print(f"skip {r.id}: its parent failed", flush=True)
            while ready and len(running) < jobs:
                r = ready.pop(0)
                todo.remove(r)
                print(
                    f"start {r.id} ({'rebuild for its B run' if state(spec, r) == 'done' else state(spec, r)})",
                    flush=True,
                )
                running[pool.submit(execute, spec, r)] = r
            if not running:
                if todo:
                    print(f"waiting on parents that are not planned to run: {[r.id for r in todo]}", flush=True)
                break
            done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                r, code, seconds = fut.result()
                del running[fut]
                print(f"{'done' if code == 0 else 'FAILED'} {r.id} in {seconds / 60:.1f} min (exit {code})", flush=True)
                if code != 0:
                    failed.add(r.id)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["plan", "run", "report"])
    p.add_argument("spec")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each one torch thread)")
    p.add_argument("--only", action="append", help="run ids starting with this (repeatable), e.g. A/grpo")
    p.add_argument("--limit", type=int, help="start at most this many runs")
    args = p.parse_args(argv)
    spec = load_spec(args.spec)
    if args.action == "plan":
        for r in plan(spec):
            print(f"{state(spec, r):10s} {r.id}")
        return 0
    if args.action == "run":
        return run_all(spec, args.jobs, args.only, args.limit)
    from study_report import write_report

    for path in write_report(spec, REPO / spec["results_dir"]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
