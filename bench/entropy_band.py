"""Entropy band check: do REPO / ADAPO hold the entropy near H* where plain GRPO / DAPO let it fall?

    python bench/entropy_band.py --variants grpo,repo_r_z4 --seeds 0,1,2 --jobs 2 [--tag entropy_band]
    python bench/entropy_band.py --report-only --runs DIR      # summarise runs made elsewhere

Every (variant, seed) is one `python -m eprl.training train` on the embedded tiny default (tasks/default.yaml,
cached warm-start in $EPRL_CACHE), single-threaded on the CPU, `--jobs` of them at a time. Variants differ
only by their overrides (VARIANTS); `common_overrides` holds what they share. Each variant has a baseline (BASELINE):
the same settings without the controller, so "holds the band" is always read against "what it would
have done".

Per run: H0 (the mean entropy of its first REF_ITERATIONS iterations, for every variant alike), the
mean entropy of the last `--window` iterations relative to H0, and held-out success first -> last. A run "holds the band" when that windowed mean is within +-`--band` of H0 (per-iteration entropy
on 64 trajectories is noisy, +-20%, so single iterations are not the criterion). Results across seeds
are medians. Output (atomic): bench/results/<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_io import machine, write_results

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
TASK = REPO / "tasks" / "default.yaml"

EC = "learner.entropy_control"
E2 = ["learner.epochs=2", "learner.minibatches=4"]  # 8 optimizer steps per batch: ratios leave 1, clipping can bind
# A controller that reads through the noise of one iteration's entropy (64 trajectories: +-20%):
# H* = mean of the first 3 iterations, EMA 0.5 of H, dead band +-10% of H*.
BAND = [f"{EC}.target_iterations=3", f"{EC}.smoothing=0.5", f"{EC}.tolerance=0.1", f"{EC}.tolerance_relative=true"]
REPO_R_WIDE = [f"{EC}.type=repo_r", f"{EC}.zeta=0.05", f"{EC}.zeta_max=4.0"]
VARIANTS: dict[str, list[str]] = {
    "grpo": [],
    "repo_r": [f"{EC}.type=repo_r"],
    "repo_r_z1": [f"{EC}.type=repo_r", f"{EC}.zeta_max=1.0"],
    "repo_r_z4": REPO_R_WIDE,
    "repo_r_z4_band": REPO_R_WIDE + BAND,
    "repo_d": [f"{EC}.type=repo_d"],
    "repo_d_band": [f"{EC}.type=repo_d"] + BAND,
    "grpo_e2": E2,
    "repo_r_z4_e2": E2 + REPO_R_WIDE,
    "dapo_e2": E2 + ["learner.loss=dapo"],
    "adapo_e2": E2 + ["learner.loss=dapo", f"{EC}.type=adapo"],
    "adapo_e2_band": E2 + ["learner.loss=dapo", f"{EC}.type=adapo", f"{EC}.eps_high_max=0.5"] + BAND,
    "dapo_e2_lr1e-4": E2 + ["learner.loss=dapo", "learner.lr=1e-4"],
    "adapo_e2_lr1e-4": E2 + ["learner.loss=dapo", f"{EC}.type=adapo", "learner.lr=1e-4"],
}
BASELINE = {
    "repo_r": "grpo",
    "repo_r_z1": "grpo",
    "repo_r_z4": "grpo",
    "repo_r_z4_band": "grpo",
    "repo_d": "grpo",
    "repo_d_band": "grpo",
    "repo_r_z4_e2": "grpo_e2",
    "adapo_e2": "dapo_e2",
    "adapo_e2_band": "dapo_e2",
    "adapo_e2_lr1e-4": "dapo_e2_lr1e-4",
}
REF_ITERATIONS = 3  # every run's reference entropy: the mean of its first 3 iterations (same for every variant)


def common_overrides(args, seed: int, run_dir: Path) -> list[str]:
    return [
        f"run.seed={seed}",
        f"run.iterations={args.iterations}",
        "run.eval_every=0",
        f"run.checkpoint_every={max(args.iterations, 1)}",
        "run.threads=1",
        "run.progress=false",
        "run.device=cpu",
        f"run.out_dir={run_dir.parent}",
        f"run.name={run_dir.name}",
    ] + list(args.extra)


def run_one(args, variant: str, seed: int) -> dict:
    run_dir = Path(args.runs) / f"{variant}-s{seed}"
    overrides = common_overrides(args, seed, run_dir) + VARIANTS[variant]
    cmd = [sys.executable, "-m", "eprl.training", "train", "--task", str(TASK)] + [
        a for o in overrides for a in ("--set", o)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    shutil.rmtree(run_dir, ignore_errors=True)  # our own scratch run directory, from an earlier attempt
    t0 = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    print(f"[{variant} seed {seed}] rc={rc} {time.perf_counter() - t0:.0f}s", flush=True)
    return {"variant": variant, "seed": seed, "rc": rc, "wall_s": time.perf_counter() - t0, "overrides": overrides}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def summarize_run(run_dir: Path, window: int, band: float) -> dict | None:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if len(rows) <= window:
        return None
    ent = [r["entropy"] for r in rows]
    target = statistics.fmean(ent[:REF_ITERATIONS])
    tail = statistics.fmean(ent[-window:])
    evals = read_jsonl(run_dir / "eval.jsonl")
    ctrl = next((k for k in ("zeta", "eps_high") if k in rows[-1]), None)
    return {
        "iterations": len(rows),
        "target": target,
        "entropy_tail": tail,
        "tail_rel": tail / target - 1.0,
        "holds_band": abs(tail / target - 1.0) <= band,
        "entropy_curve": [round(e, 4) for e in ent],
        "control": {ctrl: [r.get(ctrl) for r in rows]} if ctrl else {},
        "clip_frac_high": statistics.fmean(r.get("clip_frac_high", 0.0) for r in rows),
        "reward_first5": statistics.fmean(r["reward_mean"] for r in rows[:5]),
        "reward_last5": statistics.fmean(r["reward_mean"] for r in rows[-5:]),
        "eval_initial": evals[0]["eval_success"] if evals else None,
        "eval_final": evals[-1]["eval_success"] if len(evals) > 1 else None,
    }


def aggregate(per_run: dict[str, dict[int, dict]], band: float) -> dict[str, dict]:
    out = {}
    for variant, seeds in per_run.items():
        ok = [s for s in seeds.values() if s]
        if not ok:
            continue

        def med(k: str, ok: list[dict] = ok) -> float | None:
            values = [s[k] for s in ok if s[k] is not None]
            return statistics.median(values) if values else None

        out[variant] = {
            "seeds": len(ok),
            "tail_rel_median": med("tail_rel"),
            "holds_band": sum(s["holds_band"] for s in ok),
            "tail_rel_each": [round(s["tail_rel"], 3) for s in ok],
            "eval_initial_median": med("eval_initial"),
            "eval_final_median": med("eval_final"),
            "reward_first5_median": med("reward_first5"),
            "reward_last5_median": med("reward_last5"),
            "clip_frac_high_median": med("clip_frac_high"),
            "baseline": BASELINE.get(variant),
        }
    return out


def write_md(result: dict) -> str:
    a, band, win = result["aggregate"], result["band"], result["window"]
    lines = [
        f"# Entropy band check ({result['tag']})",
        "",
        f"> {result['status']}" if result.get("status") else "",
        "",
        f"Embedded tiny default (`tasks/default.yaml`), {result['iterations']} iterations, seeds {result['seeds']}, "
        f"common overrides `{' '.join(result['common_extra']) or '(none)'}` on top of the defaults (lr 5e-5, 1 epoch x 1 minibatch, PPO clip).",
        f"A run holds the band when the mean entropy of its last {win} iterations is within +-{band:.0%} of H0, "
        f"the mean entropy of its first {REF_ITERATIONS} iterations (what the `_band` controllers target). Medians over seeds.",
        "",
        result.get("ran_on")
        or f"Machine: {result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
        f"{result['jobs']} runs at a time, 1 torch thread each, torch {result['machine']['torch']}, {result['machine']['date']}.",
        "",
        "| variant | baseline | overrides | last-window entropy vs H0 (median; each seed) | seeds holding the band | held-out success first -> last (median) | train reward first-5 -> last-5 | clip frac high |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, s in a.items():
        ev = (
            f"{s['eval_initial_median']:.3f} -> {s['eval_final_median']:.3f}"
            if s["eval_final_median"] is not None
            else "-"
        )
        lines.append(
            f"| {v} | {s['baseline'] or '-'} | `{' '.join(VARIANTS.get(v, [])) or '(defaults)'}` | {s['tail_rel_median']:+.0%} "
            f"({', '.join(f'{x:+.0%}' for x in s['tail_rel_each'])}) | {s['holds_band']}/{s['seeds']} | {ev} | "
            f"{s['reward_first5_median']:.2f} -> {s['reward_last5_median']:.2f} | {s['clip_frac_high_median']:.4f} |"
        )
    lines += ["", "Per-iteration entropy and controller values for every run are in the JSON (`runs`)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default="grpo,repo_d,repo_d_band,repo_r_z4_band,dapo_e2,adapo_e2_band")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=40)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--band", type=float, default=0.10)
    p.add_argument("--runs", default=os.environ.get("EPRL_BAND_RUNS", "/work/scratch/entropy_band"))
    p.add_argument("--tag", default="entropy_band")
    p.add_argument("--status", default="")
    p.add_argument("--report-only", action="store_true")
    p.add_argument(
        "--ran-on", default="", help="with --report-only: where the runs were made (replaces this machine's line)"
    )
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    Path(args.runs).mkdir(parents=True, exist_ok=True)
    launched = []
    if not args.report_only:
        with cf.ThreadPoolExecutor(args.jobs) as pool:
            launched = list(pool.map(lambda vs: run_one(args, *vs), [(v, s) for s in seeds for v in variants]))
    per_run = {
        v: {s: summarize_run(Path(args.runs) / f"{v}-s{s}", args.window, args.band) for s in seeds} for v in variants
    }
    result = {
        "tag": args.tag,
        "status": args.status,
        "iterations": args.iterations,
        "seeds": seeds,
        "window": args.window,
        "band": args.band,
        "jobs": args.jobs,
        "ran_on": args.ran_on,
        "common_extra": args.extra,
        "machine": machine(),
        "launched": launched,
        "aggregate": aggregate(per_run, args.band),
        "runs": {v: {str(s): r for s, r in d.items()} for v, d in per_run.items()},
    }
    md = write_md(result)
    write_results(RESULTS / args.tag, result, md)
    print(md)


if __name__ == "__main__":
    main()
