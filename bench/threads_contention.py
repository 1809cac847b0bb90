"""The default job under CPU contention: torch threads and OpenMP's wait policy (issue #14, item 6).

    python bench/threads_contention.py [--rounds 2] [--iterations 3] [--competitors 0,1,2]

Each setting is a real `python -m eprl.training train` of the embedded default (tasks/default.yaml, smaller
evaluation) next to k CPU-bound competitor processes (a Python busy loop each, at the job's own nice
level). Settings:
- `before`: the CLI without this change's OpenMP default (OMP_WAIT_POLICY unset: libgomp threads spin
  at every barrier), torch's default thread count (one per core);
- `after`: `python -m eprl.training` as it is now (OMP_WAIT_POLICY=PASSIVE unless the user set it, also for the
  `eprl` console script since cli.main sets it);
- `threads=1`: one torch thread (the spin question does not arise).
Settings alternate within each (round, k); the first iteration of each run (warm-up) is left out, the
figure is the median `time_iteration` over the rest. Output: bench/results/threads_contention.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = [
    "run.progress=false",
    "task.eval.num_tasks=2",
    "task.eval_samples=1",
    "run.checkpoint_every=1000",
    "run.device=cpu",
]
# how each setting starts the CLI, and extra environment
SETTINGS = {
    "before": (
        [
            "-c",
            "import eprl.training.cli as cli; cli.passive_openmp_default = lambda: None; cli.main()",
        ],
        {},
    ),
    "after": (["-m", "eprl.training"], {}),
    "threads=1": (["-m", "eprl.training"], {"__threads": "1"}),
}
BUSY = "while True: pass"


def one_run(name: str, iterations: int, out: Path) -> list[float]:
    start, extra = SETTINGS[name]
    sets = [*COMMON, f"run.iterations={iterations}", f"run.out_dir={out}", f"run.name={name.replace('=', '')}"]
    if "__threads" in extra:
        sets.append(f"run.threads={extra['__threads']}")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        *start,
        "train",
        "--task",
        str(REPO / "tasks" / "default.yaml"),
        *[a for s in sets for a in ("--set", s)],
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(x) for x in (out / name.replace("=", "") / "metrics.jsonl").read_text().splitlines()]
    return [r["time_iteration"] for r in rows[1:]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--competitors", default="0,1,2")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--note", default="", help="what else ran on the machine (recorded in the result)")
    args = p.parse_args()
    load_before = [round(x, 2) for x in os.getloadavg()]
    levels = [int(k) for k in args.competitors.split(",")]
    names = args.settings.split(",")
    times = {k: {n: [] for n in names} for k in levels}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for k in levels:
                hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(k)]
                try:
                    for n in names:
                        times[k][n] += one_run(n, args.iterations, Path(tmp) / f"r{round_}k{k}")
                        print(round_, k, n, times[k][n][-args.iterations + 1 :], flush=True)
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
    med = {k: {n: statistics.median(v) for n, v in d.items()} for k, d in times.items()}
    info = machine()
    md = [
        "# The default job under CPU contention: threads and OpenMP wait policy (issue #14)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}; {info['date']}. "
        f"`python bench/threads_contention.py --rounds {args.rounds} --iterations {args.iterations}`; load average "
        f"{load_before} before, {[round(x, 2) for x in os.getloadavg()]} after. {args.note}",
        "The k competitors are Python busy loops at the job's nice level. "
        f"Median seconds per iteration of the default job (tasks/default.yaml), {args.rounds} rounds x "
        f"{args.iterations - 1} iterations (warm-up left out); settings alternate within each round.",
        "",
        "| competitors | " + " | ".join(names) + " | after / before |",
        "|---" * (len(names) + 2) + "|",
    ]
    for k in levels:
        ratio = med[k]["after"] / med[k]["before"] if {"after", "before"} <= set(names) else float("nan")
        md.append(f"| {k} | " + " | ".join(f"{med[k][n]:.1f}" for n in names) + f" | {ratio:.2f}x |")
    write_results(
        REPO / "bench" / "results" / "threads_contention",
        {"machine": info, "args": vars(args), "seconds": times, "median_s": med},
        "\n".join(md) + "\n",
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
