"""Peak memory and time of float32 log-prob + exact entropy (forward + backward): chunked vs naive.

    python bench/logprob_memory.py [--tokens 4096 --vocab 151936 --hidden 1024 --reps 3 --chunks 256]

Each variant runs in its own fresh subprocess (so one variant's freed memory or allocator cache
cannot hide another's peak). Peak memory = ru_maxrss (the kernel's high-water mark of resident
memory) minus VmRSS measured just before the first forward+backward, after the inputs, the
lm_head weight and a pre-allocated weight-gradient buffer exist and are touched. The delta is
therefore exactly the extra memory the log-prob/entropy computation needs at its worst moment
(logits, softmax, their gradients, temporaries). Time = median wall time of `--reps` repetitions
of forward + backward (upstream gradients on both log-probs and entropies), measured in the same
subprocess after the memory measurement. Results: bench/results/logprob_memory.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def child(args: argparse.Namespace) -> dict:
    import torch
    from torch import nn

    from training.logprobs import token_logprobs_and_entropy

    torch.manual_seed(0)
    T, H, V = args.tokens, args.hidden, args.vocab
    head = nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.normal_(0, 0.02)
    head.weight.grad = torch.zeros_like(head.weight)  # pre-allocated: not part of the measured delta
    hidden = torch.randn(1, T, H, requires_grad=True)
    targets = torch.randint(0, V, (1, T))
    g_lp, g_ent = torch.randn(1, T), torch.randn(1, T)

    def naive():
        logits = head(hidden).float()
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, targets[..., None]).squeeze(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        return logp, ent

    ckpt_head = nn.Sequential(head)  # not a plain nn.Linear: forces the torch.utils.checkpoint path

    def chunked():  # fused path (plain nn.Linear head)
        return token_logprobs_and_entropy(hidden, head, targets, chunk_size=args.chunk)

    def checkpointed():
        return token_logprobs_and_entropy(hidden, ckpt_head, targets, chunk_size=args.chunk)

    fn = {"naive": naive, "chunked": chunked, "checkpoint": checkpointed}[args.variant]

    def step() -> float:
        hidden.grad = None
        head.weight.grad.zero_()
        t0 = time.perf_counter()
        logp, ent = fn()
        ((logp * g_lp).sum() + (ent * g_ent).sum()).backward()
        return time.perf_counter() - t0

    base = _rss_kib()
    times = [step()]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times += [step() for _ in range(args.reps - 1)]
    return {"variant": args.variant, "chunk_size": args.chunk if args.variant != "naive" else None,
            "peak_delta_mib": (peak - base) / 1024, "baseline_rss_mib": base / 1024,
            "times_s": times, "median_s": statistics.median(times), "threads": torch.get_num_threads()}


def machine() -> dict:
    import torch
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next(l.split(":", 1)[1].strip() for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_total": mem, "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--reps", type=int, default=1, help="1 keeps the default run near 3.5 min on 2 cores")
    p.add_argument("--chunks", type=int, nargs="+", default=[256])
    p.add_argument("--checkpoint-chunks", type=int, nargs="*", default=[], help="also time the generic checkpoint path")
    p.add_argument("--variant", choices=["naive", "chunked", "checkpoint"], help=argparse.SUPPRESS)
    p.add_argument("--chunk", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:  # child process
        print(json.dumps(child(args)))
        return
    common = ["--tokens", str(args.tokens), "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--reps", str(args.reps)]
    runs = []
    variants = [("naive", 0)] + [("chunked", c) for c in args.chunks] + [("checkpoint", c) for c in args.checkpoint_chunks]
    for variant, chunk in variants:
        cmd = [sys.executable, __file__, *common, "--variant", variant, "--chunk", str(chunk)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{variant:10s} chunk={chunk:5d}  peak +{runs[-1]['peak_delta_mib']:9.1f} MiB  median {runs[-1]['median_s']:.2f} s", flush=True)
    naive = runs[0]
    for r in runs[1:]:
        r["mem_ratio_vs_naive"] = r["peak_delta_mib"] / naive["peak_delta_mib"]
        r["time_ratio_vs_naive"] = r["median_s"] / naive["median_s"]
        r["meets_goal"] = r["mem_ratio_vs_naive"] <= 1 / 8 and r["time_ratio_vs_naive"] <= 1.15
    result = {"machine": machine(), "setup": {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden,
                                              "reps": args.reps, "dtype": "float32"}, "runs": runs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "logprob_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "logprob_memory.md").write_text(markdown(result))


def markdown(res: dict) -> str:
    m, s = res["machine"], res["setup"]
    lines = ["# Log-prob + entropy memory: chunked vs naive", "",
             f"{s['tokens']} tokens, vocab {s['vocab']:,}, hidden {s['hidden']}, float32, forward + backward "
             f"(upstream gradients on log-probs and entropies); median of {s['reps']} repetitions.", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['mem_total']} RAM, "
             f"torch {m['torch']}, Python {m['python']}, {m['date']}.", "",
             "Peak memory: ru_maxrss minus VmRSS just before the first step, in a fresh subprocess per variant; "
             "inputs, the lm_head weight and its gradient buffer are allocated before the baseline.", "",
             "| variant | chunk | peak extra memory (MiB) | vs naive | median time (s) | vs naive | goal (<=1/8 mem, <=1.15x time) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        ratio_m = f"{r['mem_ratio_vs_naive']:.3f}" if "mem_ratio_vs_naive" in r else "1"
        ratio_t = f"{r['time_ratio_vs_naive']:.2f}x" if "time_ratio_vs_naive" in r else "1x"
        goal = ("met" if r["meets_goal"] else "not met") if "meets_goal" in r else "-"
        lines.append(f"| {r['variant']} | {r['chunk_size'] or '-'} | {r['peak_delta_mib']:.0f} | {ratio_m} | "
                     f"{r['median_s']:.2f} | {ratio_t} | {goal} |")
    lines += ["", "Why the time goal (<= 1.15x) is not reachable by chunking with recompute: the head matmul "
              "(2 x tokens x hidden x vocab FLOPs, ~1.27 TFLOP here) dominates, naive runs it 3 times "
              "(forward, grad-hidden, grad-weight) and any scheme that does not keep the logits must run "
              "the forward one more time in backward: ~4/3 of the FLOPs. The fused path (plain nn.Linear "
              "head) also avoids the per-chunk [vocab x hidden] weight-gradient buffers of "
              "torch.utils.checkpoint, hence its lower memory."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
