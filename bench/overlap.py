"""Synchronous vs overlapped rollout and learning (`run.overlap`, training/overlap.py; issue #14 item 4).

    python bench/overlap.py [--rounds 3] [--iterations 8] [--probe-reps 4] [--model tiny|smollm2] [--note TEXT]

Two parts, on the same workload (tasks/default.yaml: 8 tasks x 8 samples per iteration; `--model smollm2`:
SmolLM2-135M with LoRA on tasks/smollm2_add.yaml):

1. probe (one process, `run.threads=1`): a rollout alone, a learner step alone, then both at once, once with the rollout
   in a *thread* (its own copy of the policy) and once in the overlap *process* (training/overlap.py's
   OverlappedSampler). Variants alternate in every repetition; medians. `both / (rollout + learn)` = 1 is no
   overlap at all, `both / max(rollout, learn)` = 1 is perfect overlap.
2. runs: real `python -m eprl.training train` runs, `sync` (1 torch thread), `sync 2 threads` and `overlap`
   (1 torch thread each side), alternating in every round, same seed; the figure is the median
   `time_iteration` over iterations 1.. (iteration 0 includes the sampler's start and is left out), then the
   ratio to `sync`. Entropy and success of the sync and overlapped runs are printed side by side (the runs
   are deterministic, so every round gives the same training numbers; round 1's are reported).
Output: bench/results/overlap.{json,md}, with the machine line and its load average (contention).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODELS = {
    "tiny": ("default.yaml", []),
    "smollm2": ("smollm2_add.yaml", ["model.name_or_path=smollm2-135m", "model.lora=true"]),
}
RUNS = {
    "sync": ["run.threads=1"],
    "sync 2 threads": ["run.threads=2"],
    "overlap": ["run.threads=1", "run.overlap=true"],
}


def _sets(model: str, eval_tasks: int) -> tuple[str, list[str]]:
    task, extra = MODELS[model]
    return str(REPO / "tasks" / task), [
        *extra,
        "run.progress=false",
        "run.device=cpu",
        "run.checkpoint_every=1000",
        f"task.eval.num_tasks={eval_tasks}",
        "task.eval_samples=1",
    ]


# ---------------------------------------------------------------------- 1. probe: thread vs process
def probe(model: str, reps: int, eval_tasks: int) -> dict:
    import torch

    from eprl.training.batch import collate
    from eprl.training.builders import build_engine, build_learner, build_policy, build_runner
    from eprl.training.collect import collect_episodes
    from eprl.training.config import load_run_config
    from eprl.training.overlap import OverlappedSampler
    from eprl.training.policy import resolve_model_path

    task, sets = _sets(model, eval_tasks)
    cfg = load_run_config(task, overrides=[*sets, "run.threads=1", "run.overlap=true"])
    path = resolve_model_path(cfg)
    torch.manual_seed(0)
    model_, tokenizer, _ = build_policy(cfg, path)
    learner = build_learner(cfg, model_)
    copy_ = copy.deepcopy(model_)  # the thread's own policy copy, as the process has its own
    runner, num_tasks = build_runner(cfg, "train", build_engine(cfg, copy_, tokenizer), tokenizer)
    sampler = OverlappedSampler(cfg, path, model_)
    batch = collate(collect_episodes(cfg, runner, 0, num_tasks)[0], tokenizer.pad_token_id)
    sampler.request(0, 0)
    sampler.receive()  # the process is up and warm

    def rollout(i: int) -> None:
        collect_episodes(cfg, runner, i, num_tasks)

    def thread_both(i: int) -> None:
        t = threading.Thread(target=rollout, args=(i,))
        t.start()
        learner.step(batch)
        t.join()

    def process_both(i: int) -> None:
        sampler.request(i, 1)
        learner.step(batch)
        sampler.receive()

    variants = {
        "rollout": rollout,
        "learn": lambda i: learner.step(batch),
        "both, thread": thread_both,
        "both, process": process_both,
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(reps + 1):  # rep 0: warm-up, left out
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            t0 = time.perf_counter()
            variants[name](1 + rep)
            if rep:
                times[name].append(time.perf_counter() - t0)
    gil = {"rollout": op_share(lambda: rollout(99)), "learn": op_share(lambda: learner.step(batch))}
    sampler.close()
    runner.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    serial, ideal = med["rollout"] + med["learn"], max(med["rollout"], med["learn"])
    return {
        "seconds": times,
        "median_s": med,
        "torch_op_share": gil,
        "vs_serial": {k: med[k] / serial for k in ("both, thread", "both, process")},
        "vs_ideal": {k: med[k] / ideal for k in ("both, thread", "both, process")},
    }


def op_share(fn) -> float:
    """Share of fn's wall time spent inside top-level torch ops, where the GIL is released (torch.profiler;
    its own overhead counts as Python time). The rest holds the GIL: two threads serialise on it."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    inside = sum(e.cpu_time_total for e in prof.events() if e.cpu_parent is None) / 1e6
    return inside / wall


# ---------------------------------------------------------------------- 2. runs: sync vs overlap
def one_run(model: str, name: str, iterations: int, eval_tasks: int, out: Path) -> dict:
    task, sets = _sets(model, eval_tasks)
    run_name = name.replace(", ", "_").replace(" ", "")
    sets = [*sets, *RUNS[name], f"run.iterations={iterations}", f"run.out_dir={out}", f"run.name={run_name}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "eprl.training", "train", "--task", task, *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / run_name / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(line) for line in (out / run_name / "eval.jsonl").read_text().splitlines()]
    keys = (
        "time_iteration",
        "time_rollout",
        "time_learn",
        "entropy",
        "success_rate",
        "mismatch_logp_abs_mean",
        "approx_kl",
        "ratio_max",
        "policy_lag",
    )
    return {"rows": [{k: r.get(k) for k in keys} for r in rows], "eval_success": [e["eval_success"] for e in evals]}


def runs(model: str, rounds: int, iterations: int, eval_tasks: int, names: list[str]) -> dict:
    results: dict[str, list[dict]] = {k: [] for k in names}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                out = Path(tmp) / f"r{rnd}"
                results[name].append(one_run(model, name, iterations, eval_tasks, out))
                print(
                    f"round {rnd} {name}: {[round(r['time_iteration'], 2) for r in results[name][-1]['rows']]}",
                    flush=True,
                )
    med = {k: statistics.median(r["time_iteration"] for run in v for r in run["rows"][1:]) for k, v in results.items()}
    parts = {
        k: {p: statistics.median(r[p] for run in v for r in run["rows"][1:]) for p in ("time_rollout", "time_learn")}
        for k, v in results.items()
    }
    per_round = {
        k: [statistics.median(r["time_iteration"] for r in run["rows"][1:]) for run in v] for k, v in results.items()
    }
    paired = {k: statistics.median(a / b for a, b in zip(v, per_round["sync"])) for k, v in per_round.items()}
    return {
        "runs": results,
        "median_s_per_iteration": med,
        "ratio_to_sync": {k: v / med["sync"] for k, v in med.items()},
        "per_round_s": per_round,
        "paired_ratio_to_sync": paired,
        "median_phases": parts,
    }


# ---------------------------------------------------------------------- report
def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def markdown(args, info: dict, pr: dict | None, rn: dict | None) -> str:
    cmd = (
        f"`python bench/overlap.py --model {args.model} --rounds {args.rounds} --iterations {args.iterations} "
        f"--probe-reps {args.probe_reps} --eval-tasks {args.eval_tasks} --runs '{args.runs}'`"
    )
    md = [
        "# Overlapped rollout and learning vs synchronous (issue #14 item 4)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}; {info['date']}; "
        f"load average before/after: {info['load_before']} / {info['load_after']}. {cmd}.",
        f"Contention: {args.note or 'none noted'}.",
        "",
        f"Workload: `{MODELS[args.model][0]}` {' '.join(MODELS[args.model][1])} (the task file's tasks x samples per iteration). "
        "Variants alternate in every round; medians. Compare ratios, not seconds, when the machine was shared.",
        "",
    ]
    if pr:
        m = pr["median_s"]
        md += [
            "## Thread or process: one rollout and one learner step at once",
            "",
            "| rollout alone s | learn alone s | sum | max | both, thread s | both, process s |",
            "|---|---|---|---|---|---|",
            f"| {m['rollout']:.2f} | {m['learn']:.2f} | {m['rollout'] + m['learn']:.2f} | {max(m['rollout'], m['learn']):.2f} "
            f"| {m['both, thread']:.2f} ({pr['vs_serial']['both, thread']:.2f}x sum, {pr['vs_ideal']['both, thread']:.2f}x max) "
            f"| {m['both, process']:.2f} ({pr['vs_serial']['both, process']:.2f}x sum, {pr['vs_ideal']['both, process']:.2f}x max) |",
            "",
            f"{args.probe_reps} repetitions after a warm-up; each side 1 torch thread. Share of wall time inside "
            f"torch ops (GIL released; torch.profiler, one call each): rollout {pr['torch_op_share']['rollout']:.0%}, "
            f"learn {pr['torch_op_share']['learn']:.0%}; the rest holds the GIL, so two threads can overlap at most "
            "that much.",
            "",
        ]
    if rn:
        med, ratio, ph = rn["median_s_per_iteration"], rn["ratio_to_sync"], rn["median_phases"]
        md += [
            "## Training runs: seconds per iteration",
            "",
            "| run | s / iteration | vs sync | vs sync, per round (median) | rollout s | learn s |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {k} | {med[k]:.2f} | {ratio[k]:.2f}x | {rn['paired_ratio_to_sync'][k]:.2f}x | "
            f"{ph[k]['time_rollout']:.2f} | {ph[k]['time_learn']:.2f} |"
            for k in med
        ]
        md += [
            "",
            f"{args.rounds} rounds x {args.iterations} iterations (iteration 0 left out). Under overlap, rollout "
            "and learn run at once: given a free core for each side an iteration costs max(rollout, learn); without "
            "one, both phases slow down (the rollout and learn columns).",
            "",
            "## Effect on training (same seed, round 1)",
            "",
            "| run | entropy first / last | mean entropy | mean train success | eval success start / end | "
            "mean \\|logp_sampler - logp\\| | mean approx_kl | mean ratio_max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k in ("sync", "overlap"):
            run = rn["runs"][k][0]
            rows = run["rows"]
            md.append(
                f"| {k} | {rows[0]['entropy']:.3f} / {rows[-1]['entropy']:.3f} | {_mean(r['entropy'] for r in rows):.3f} "
                f"| {_mean(r['success_rate'] for r in rows):.3f} | {run['eval_success'][0]:.3f} / {run['eval_success'][-1]:.3f} "
                f"| {_mean(r['mismatch_logp_abs_mean'] for r in rows[1:]):.2e} | {_mean(r['approx_kl'] for r in rows[1:]):.2e} | {_mean(r['ratio_max'] for r in rows[1:]):.3f} |"
            )
        md += [
            "",
            "The overlapped run learns each batch one update after the weights that sampled it (policy_lag 1), "
            "with the ratio against the sampler's log-probs (old_logprobs: inference); the synchronous run's "
            "|logp_sampler - logp| is float rounding only. The first batches differ too: the overlapped run's come from "
            "the sampler process, seeded per iteration. One seed: differences in success are within noise.",
        ]
    return "\n".join(md) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--probe-reps", type=int, default=4)
    ap.add_argument("--eval-tasks", type=int, default=32)
    ap.add_argument("--skip", choices=["probe", "runs"], default=None)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {list(RUNS)} (sync is needed)")
    ap.add_argument("--note", default="", help="what else ran on the machine (recorded in the result)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "overlap"))
    args = ap.parse_args()
    info = {**machine(), "load_before": [round(x, 2) for x in os.getloadavg()]}
    pr = probe(args.model, args.probe_reps, args.eval_tasks) if args.skip != "probe" else None
    if pr:
        print(json.dumps(pr["median_s"]), flush=True)
    names = [n.strip() for n in args.runs.split(",")]
    rn = runs(args.model, args.rounds, args.iterations, args.eval_tasks, names) if args.skip != "runs" else None
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    write_results(
        Path(args.out), {"machine": info, "args": vars(args), "probe": pr, "runs": rn}, markdown(args, info, pr, rn)
    )
    print(markdown(args, info, pr, rn))


if __name__ == "__main__":
    main()
