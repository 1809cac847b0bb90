"""GPU check: 2-iteration training runs on a CUDA device (fp16 and bf16 compute, `hf` and `vllm` engines).

    python bench/gpu_check.py [--engines hf,vllm] [--dtypes fp16,bf16] [--iterations 2]

Each run is `eprl train` on the embedded tiny default (tasks/default.yaml) with `run.device=cuda`, in its
own subprocess, one at a time. It records, per run: exit status, wall time, and from metrics.jsonl the
entropy, loss, grad norm, clip fractions and the inference-vs-learner mismatch (the engine samples from
float32 master weights unless `engine.dtype` says otherwise; the learner computes in 16 bits under
autocast, so a non-zero mismatch is expected and is what the numbers show). Results go to
bench/results/gpu_check.{json,md} with the device name, torch/vllm versions and the date.

Without a CUDA device it exits with status 2 and says so (nothing is written).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
KEYS = [
    "reward_mean",
    "entropy",
    "entropy_sampled",
    "loss",
    "grad_norm",
    "clip_frac_high",
    "clip_frac_low",
    "mismatch_dp_mean",
    "mismatch_dp_max",
    "mismatch_iw_max",
    "time_rollout",
    "time_learn",
]


def run_one(engine: str, dtype: str, iterations: int, out: Path) -> dict:
    name = f"{engine}-{dtype}"
    overrides = [
        f"run.name={name}",
        f"run.out_dir={out}",
        f"run.iterations={iterations}",
        "run.device=cuda",
        f"model.dtype={dtype}",
        f"engine.type={engine}",
        "run.progress=false",
        "run.checkpoint_every=1",
        "task.eval.num_tasks=16",
        "task.eval_samples=1",
    ]
    if engine == "vllm":
        overrides += ["engine.gpu_memory_utilization=0.3", "engine.max_model_len=512"]
    cmd = [sys.executable, "-m", "eprl.training", "train", "--task", str(REPO / "tasks" / "default.yaml")]
    cmd += [a for o in overrides for a in ("--set", o)]
    log = out / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    row = {"engine": engine, "dtype": dtype, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "log_tail": ""}
    metrics = out / name / "metrics.jsonl"
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        row["iterations"] = [{k: r.get(k) for k in KEYS if k in r} for r in rows]
    if rc != 0:
        row["log_tail"] = "\n".join(log.read_text().splitlines()[-20:])
    return row


def write_md(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# GPU check: 2-iteration training on CUDA (tiny default)",
        "",
        f"Device: {m['device']}; torch {m['torch']}, vllm {m['vllm']}, Python {m['python']}, {m['date']}.",
        "",
        "| engine | dtype | rc | wall s | entropy (it 0 -> last) | loss (last) | grad norm (last) | mismatch dp max | iw max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        its = r.get("iterations") or [{}]
        first, last = its[0], its[-1]
        f = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(
            f"| {r['engine']} | {r['dtype']} | {r['rc']} | {r['wall_s']} | {f(first.get('entropy'))} -> "
            f"{f(last.get('entropy'))} | {f(last.get('loss'))} | {f(last.get('grad_norm'))} | "
            f"{f(last.get('mismatch_dp_max'))} | {f(last.get('mismatch_iw_max'))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="hf,vllm")
    ap.add_argument("--dtypes", default="fp16,bf16")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--out", default=os.environ.get("EPRL_GPU_CHECK_OUT", "/tmp/eprl-gpu-check"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; run this on a GPU host (nothing written)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(e, d, args.iterations, out) for e in args.engines.split(",") for d in args.dtypes.split(",")]
    result = {"machine": machine("device", "vllm"), "runs": runs}
    write_results(RESULTS / "gpu_check", result, write_md(result), indent=2)
    print(write_md(result))
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
