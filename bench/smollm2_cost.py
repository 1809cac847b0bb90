"""Cost of one training iteration on SmolLM2-135M-Instruct: full fine-tuning vs LoRA, fp32 vs bf16 autocast,
and the micro-batch default (issue #14: `auto` vs one pass); the embedded tiny default for reference.

    python bench/smollm2_cost.py [--rounds 2] [--iterations 3] [--threads 1] [--settings "full fp32,tiny default"]

Each setting is a real `python -m eprl.training train` on the study's domain A (tasks/smollm2_add.yaml, 32
episodes per iteration, 2 minibatches), run under `/usr/bin/time -v` for its peak RSS. The settings run
alternately, round after round, so a busy machine slows them alike; the first iteration of each run (warm-up)
is left out, and the figures are medians over the rest. Peak RSS: the whole process's (`time -v`), and
`rss_peak_mb` of each iteration's metrics row (the peak so far, after that iteration).
Output: bench/results/smollm2_cost.{json,md} (`--out` to name another stem).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COMMON = [
    "model.name_or_path=smollm2-135m",
    "learner.lr=1e-4",
    "learner.minibatches=2",
    "run.device=cpu",
    "run.progress=false",
    "task.eval.num_tasks=1",
    "task.eval_samples=1",
    "run.checkpoint_every=1000",
]
LORA = ["model.lora=true", "model.lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"]
ONE_PASS = ["learner.micro_batch_tokens=null"]  # before issue #14: the whole minibatch in one forward/backward
TINY = "tiny default"  # the embedded default on its own task (tasks/default.yaml), not on SmolLM2's domain
SETTINGS: dict[str, list[str]] = {
    "full fp32": [],
    "LoRA fp32 (study)": LORA,
    "full bf16": ["model.dtype=bf16"],
    "LoRA bf16": LORA + ["model.dtype=bf16"],
    "full fp32 one-pass": ONE_PASS,
    "LoRA fp32 one-pass": LORA + ONE_PASS,
    TINY: [],
    "tiny default one-pass": ONE_PASS,
}


def one_run(name: str, sets: list[str], iterations: int, threads: int, out: Path) -> dict:
    run = out / re.sub(r"\W+", "_", name)
    tiny = name.startswith(TINY)
    task = REPO / "tasks" / ("default.yaml" if tiny else "smollm2_add.yaml")
    common = (
        [
            "run.device=cpu",
            "run.progress=false",
            "task.eval.num_tasks=1",
            "task.eval_samples=1",
            "run.checkpoint_every=1000",
        ]
        if tiny
        else COMMON
    )
    cmd = [
        "/usr/bin/time",
        "-v",
        sys.executable,
        "-m",
        "eprl.training",
        "train",
        "--task",
        str(task),
        *[
            a
            for s in [
                *common,
                *sets,
                f"run.iterations={iterations}",
                f"run.threads={threads}",
                f"run.out_dir={out}",
                f"run.name={run.name}",
            ]
            for a in ("--set", s)
        ],
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    every = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rows = every[1:]  # skip the warm-up iteration
    pick = lambda key: [r[key] for r in rows]  # noqa: E731
    return {
        "setting": name,
        "rollout_s": pick("time_rollout"),
        "learn_s": pick("time_learn"),
        "rollout_tokens_per_s": pick("rollout_tokens_per_s"),
        "learn_tokens_per_s": pick("learn_tokens_per_s"),
        "peak_rss_mb": rss_kb / 1024,
        "rss_peak_mb_per_iteration": [r["rss_peak_mb"] for r in every],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", default=",".join(list(SETTINGS)[:4]))
    p.add_argument("--out", default="smollm2_cost")
    args = p.parse_args()
    names = [n for n in args.settings.split(",") if n]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in names:
                runs[name].append(
                    one_run(name, SETTINGS[name], args.iterations, args.threads, Path(tmp) / f"r{round_}")
                )
                print(name, runs[name][-1], flush=True)
    med = lambda rs, key: statistics.median([v for r in rs for v in r[key]])  # noqa: E731
    table = {
        n: {k: med(rs, k) for k in ("rollout_s", "learn_s", "rollout_tokens_per_s", "learn_tokens_per_s")}
        | {
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "rss_peak_mb_per_iteration": [max(v) for v in zip(*(r["rss_peak_mb_per_iteration"] for r in rs))],
        }
        for n, rs in runs.items()
    }
    ref = table[names[0]]["learn_s"]
    info = machine()
    md = [
        "# SmolLM2-135M-Instruct: cost of one iteration (full fine-tuning vs LoRA, fp32 vs bf16)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, {args.threads} torch thread(s); "
        f"{info['date']}. `python bench/smollm2_cost.py --rounds {args.rounds} --iterations {args.iterations}`.",
        "Domain A (tasks/smollm2_add.yaml): 32 episodes per iteration, <= 32 generated tokens each, 2 minibatches. "
        f"Medians over {args.rounds} alternating rounds x {args.iterations - 1} iterations (the first, warm-up, left out); "
        "the machine was shared with other jobs, so compare ratios within the table.",
        "",
        "`tiny default` rows: the embedded default on its own task (tasks/default.yaml, 64 episodes), for reference. "
        "`one-pass` = `learner.micro_batch_tokens=null` (the default before issue #14; now `auto`).",
        "",
        "| setting | rollout s | learn s | learn vs first row | generated tokens/s | learner tokens/s | peak RSS (MB) | "
        "rss_peak_mb after each iteration |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {n} | {t['rollout_s']:.1f} | {t['learn_s']:.1f} | {t['learn_s'] / ref:.2f}x | {t['rollout_tokens_per_s']:.0f} | "
        f"{t['learn_tokens_per_s']:.0f} | {t['peak_rss_mb']:.0f} | "
        f"{', '.join(f'{v:.0f}' for v in t['rss_peak_mb_per_iteration'])} |"
        for n, t in table.items()
    ]
    write_results(
        REPO / "bench" / "results" / args.out,
        {"machine": info, "args": vars(args), "table": table, "runs": runs},
        "\n".join(md) + "\n",
    )


if __name__ == "__main__":
    main()
