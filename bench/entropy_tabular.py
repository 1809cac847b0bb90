"""Entropy controllers in closed loop on the tabular testbed (training/tabular_testbed.py).

    python bench/entropy_tabular.py [--seeds 0,1,2,3,4] [--iterations 60] [--optimizer adam --lr 0.1]

A tabular softmax policy (64 states x 8 actions, 8 samples per state per iteration, Bernoulli rewards)
trained by the real advantage / loss / controller code with SGD. Two starting points: a flat policy
(init logits N(0,1), H0 ~ 1.7 nats) and a peaked one (N(0,3^2), H0 ~ 0.8). For each variant and seed:
the mean entropy of the last 10 iterations relative to H0 (iteration 0's, the controller's target),
and whether it stays within +-10%. Medians over seeds. Results (atomic): bench/results/entropy_tabular.{json,md};
with `--optimizer adam` (the LM learner's optimizer; --lr 0.1 makes GRPO's fall about SGD's), entropy_tabular_adam.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_io import machine as machine_info  # noqa: E402
from bench_io import write_results

from eprl.training.config import EntropyControlConfig, LearnerConfig  # noqa: E402
from eprl.training.tabular_testbed import OPTIMIZERS, STARTS, run_tabular, tail_rel  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
OPTIMIZER_NAMES = {name: opt.__name__ for name, opt in OPTIMIZERS.items()}  # SGD, Adam
E4 = dict(epochs=4, minibatches=4)  # 16 SGD steps per batch: ratios leave 1, the clip bounds bind
VARIANTS: dict[str, dict] = {
    "grpo": {},
    "repo_r": dict(ec=dict(type="repo_r")),
    "repo_r_zeta_max_1": dict(ec=dict(type="repo_r", zeta_max=1.0)),
    "repo_d": dict(ec=dict(type="repo_d")),
    "dapo_e4": dict(loss="dapo", **E4),
    "adapo_e4": dict(loss="dapo", ec=dict(type="adapo"), **E4),
}
BASELINE = {"repo_r": "grpo", "repo_r_zeta_max_1": "grpo", "repo_d": "grpo", "adapo_e4": "dapo_e4"}


def learner_cfg(spec: dict) -> LearnerConfig:
    spec = dict(spec)
    return LearnerConfig(entropy_control=EntropyControlConfig(**spec.pop("ec", {})), **spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--band", type=float, default=0.10)
    ap.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="sgd")
    ap.add_argument("--lr", type=float, default=None, help="step size (default: each start's SGD step)")
    args = ap.parse_args()
    starts = {name: {**kw, **({"lr": args.lr} if args.lr is not None else {})} for name, kw in STARTS.items()}
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, curves = [], {}
    for start, kw in starts.items():
        for name, spec in VARIANTS.items():
            rel, reward, held = [], [], 0
            for seed in seeds:
                out = run_tabular(
                    learner_cfg(spec), iterations=args.iterations, seed=seed, optimizer=args.optimizer, **kw
                )
                r = tail_rel(out["entropy"])
                rel.append(r)
                held += abs(r) <= args.band
                reward.append((statistics.fmean(out["reward"][:5]), statistics.fmean(out["reward"][-10:])))
                curves[f"{start}/{name}/{seed}"] = {k: [round(x, 5) for x in v] for k, v in out.items()}
            rows.append(
                {
                    "start": start,
                    "variant": name,
                    "baseline": BASELINE.get(name),
                    "spec": spec,
                    "tail_rel_median": statistics.median(rel),
                    "tail_rel_each": [round(x, 3) for x in rel],
                    "seeds_in_band": held,
                    "seeds": len(seeds),
                    "reward_first5_median": statistics.median(a for a, _ in reward),
                    "reward_last10_median": statistics.median(b for _, b in reward),
                }
            )
            print(f"{start:6s} {name:18s} {rows[-1]['tail_rel_median']:+.0%} in band {held}/{len(seeds)}", flush=True)
    machine = machine_info()
    result = {
        "iterations": args.iterations,
        "seeds": seeds,
        "band": args.band,
        "starts": starts,
        "optimizer": args.optimizer,
        "machine": machine,
        "rows": rows,
        "curves": curves,
    }
    lines = [
        "# Entropy controllers in closed loop: tabular testbed",
        "",
        f"`training/tabular_testbed.py`: 64 states x 8 actions, 8 samples per state per iteration, "
        f"{OPTIMIZER_NAMES[args.optimizer]} (step sizes {json.dumps({k: v['lr'] for k, v in starts.items()})}), "
        f"{args.iterations} iterations, seeds {seeds}. Entropy = exact mean over states; H0 = iteration 0's "
        f"(the controllers' target, tolerance 0). In band = last-10 mean within +-{args.band:.0%} of H0. "
        f"torch {machine['torch']}, {machine['date']}.",
        "",
        "| start | variant | baseline | settings | last-10 entropy vs H0, median (each seed) | seeds in band | reward first-5 -> last-10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['start']} | {r['variant']} | {r['baseline'] or '-'} | `{json.dumps(r['spec'])}` | "
            f"{r['tail_rel_median']:+.0%} ({', '.join(f'{x:+.0%}' for x in r['tail_rel_each'])}) | "
            f"{r['seeds_in_band']}/{r['seeds']} | {r['reward_first5_median']:.2f} -> {r['reward_last10_median']:.2f} |"
        )
    write_results(
        RESULTS / ("entropy_tabular" + ("" if args.optimizer == "sgd" else f"_{args.optimizer}")),
        result,
        "\n".join(lines) + "\n",
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
