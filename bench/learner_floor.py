"""The learner's step against its floor: a bare `model(input_ids, labels=...)` forward + backward.

    python bench/learner_floor.py [--rounds 3] [--threads 1] [--models tiny,smollm2-lora,smollm2-full]

On one batch per model (multi-turn rows: prompt, then answers and observations; only answers are action
tokens), each round times, one after the other:
- `bare fwd+bwd`: model(input_ids, attention_mask, labels) (HF's full-vocabulary logits and cross-entropy
  over the action tokens), loss.backward(): the floor the issue names;
- `bare + AdamW`: the same plus gradient clipping and an AdamW step (what any update also pays);
- `learner`: `Learner.step` at the default settings (1 epoch x 1 minibatch, ppo, float32 log-probs and
  exact entropy, micro_batch_tokens auto; no pre-pass, lm_head only at action positions);
- `learner, before`: the same with `reuse_update_forward = head_on_actions = False` and one pass
  (micro_batch_tokens None): the no-grad pre-pass over the whole batch and the lm_head at every
  position, as before issue #14.
One warm-up round is left out; figures are medians over the rest, ratios against `bare fwd+bwd`. The
variants alternate within each round, so a busy machine slows them alike.
Output: bench/results/learner_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# rows, prompt tokens (lo, hi), turns, answer tokens (lo, hi), observation tokens (lo, hi)
SHAPES = {
    "tiny": (64, (40, 60), 2, (8, 24), (6, 12)),  # the default job: 8 tasks x 8, multi-turn
    "smollm2": (8, (80, 120), 1, (16, 48), (0, 0)),
}  # chat prompt, one short answer


def make_batch(vocab: int, pad_id: int, shape, seed: int = 0):
    from eprl.agents.trajectory import Trajectory
    from eprl.training.batch import collate

    rows, prompt, turns, answer, obs = shape
    g = torch.Generator().manual_seed(seed)
    draw = lambda lo_hi: int(torch.randint(lo_hi[0], lo_hi[1] + 1, (1,), generator=g))  # noqa: E731
    trajs = []
    for i in range(rows):
        mask = [0] * draw(prompt)
        for t in range(turns):
            mask += [1] * draw(answer) + ([0] * draw(obs) if t < turns - 1 else [])
        ids = torch.randint(3, vocab, (len(mask),), generator=g).tolist()
        trajs.append(Trajectory(ids, mask, [-1.0] * len(ids), [], float(i % 2), bool(i % 2), "t", i // 8, "terminated"))
    return collate(trajs, pad_id)


def load(name: str, threads: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eprl.training.config import load_run_config
    from eprl.training.policy import load_policy, resolve_model_path

    sets = [f"run.threads={threads}"]
    if name.startswith("smollm2"):
        sets += ["model.name_or_path=smollm2-135m"]
    if name == "smollm2-lora":  # the study's LoRA (bench/smollm2_cost.py)
        sets += [
            "model.lora=true",
            "model.lora_target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        ]
    cfg = load_run_config(REPO / "tasks" / "default.yaml", overrides=sets)
    model, tok = load_policy(resolve_model_path(cfg), cfg)
    del AutoModelForCausalLM, AutoTokenizer
    return model, tok, cfg


def bare_step(model, batch, optimizer=None):
    labels = batch.input_ids.clone()
    labels[:, 0] = -100
    labels[:, 1:][batch.action_mask == 0] = -100  # HF shifts: labels[t] is the target of logits[t-1]
    model.train()
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels, use_cache=False)
    out.loss.backward()
    if optimizer is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.zero_grad(set_to_none=True)


def bench_model(name: str, rounds: int, threads: int) -> dict:
    from eprl.training.config import LearnerConfig
    from eprl.training.learner import Learner

    load_before = [round(x, 2) for x in os.getloadavg()]
    model, tok, cfg = load(name, threads)
    batch = make_batch(len(tok), tok.pad_token_id, SHAPES[name.split("-")[0]])
    new = Learner(model, LearnerConfig(), temperature=1.0, max_len_norm=320)
    old = Learner(model, LearnerConfig(micro_batch_tokens=None), temperature=1.0, max_len_norm=320)
    old.reuse_update_forward = old.head_on_actions = False
    adamw = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    variants = {
        "bare fwd+bwd": lambda: bare_step(model, batch),
        "bare + AdamW": lambda: bare_step(model, batch, adamw),
        "learner": lambda: new.step(batch),
        "learner, before": lambda: old.step(batch),
    }
    times: dict[str, list[float]] = {v: [] for v in variants}
    order = random.Random(0)
    for r in range(rounds + 1):
        names = list(variants)
        order.shuffle(names)  # a fresh order each round: no variant always runs first or after the same one
        for v in names:
            fn = variants[v]
            t0 = time.perf_counter()
            fn()
            if r > 0:  # round 0 warms up
                times[v].append(time.perf_counter() - t0)
        print(name, r, {v: round(t[-1], 3) for v, t in times.items() if t}, flush=True)
    med = {v: statistics.median(t) for v, t in times.items()}
    return {
        "model": name,
        "micro_batch_tokens": new.micro_batch_tokens,
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "params": sum(p.numel() for p in model.parameters()),
        "rows": len(batch),
        "tokens": int(batch.attention_mask.sum()),
        "padded_tokens": batch.input_ids.numel(),
        "action_tokens": int(batch.action_mask.sum()),
        "vocab": len(tok),
        "seconds": times,
        "median_s": med,
        "ratio": {v: med[v] / med["bare fwd+bwd"] for v in med},
        "date": machine()["date"],
        "load_before": load_before,  # the 1/5/15-min load averages: another job on the cores shows here
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


def ran(row: dict) -> str:
    """When a row ran and its 1-min load before -> after (rows older than these fields: as run then)."""
    if "date" not in row:
        return "2026-11-29, shared (two training jobs; this bench at nice 10)"
    return f"{row['date'][:16]} ({row['load_before'][0]} -> {row['load_after'][0]})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default="tiny,smollm2-lora,smollm2-full")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [bench_model(m, args.rounds, args.threads) for m in args.models.split(",")]
    stem = REPO / "bench" / "results" / "learner_floor"
    if stem.with_suffix(".json").is_file():  # keep the other models' rows of an earlier run (each with its own args)
        import json

        done = {r["model"] for r in results}
        results = [
            r for r in json.loads(stem.with_suffix(".json").read_text())["results"] if r["model"] not in done
        ] + results
    for r in results:
        r.setdefault("rounds", args.rounds)
    info = machine()
    md = [
        "# Learner step vs a bare forward + backward (issue #14)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, {args.threads} torch thread(s); "
        f"{info['date']}. `python bench/learner_floor.py --rounds {args.rounds} --models {args.models}`.",
        "Compare ratios within a row: its variants ran side by side in alternating rounds (medians over the row's "
        "rounds, one warm-up round left out). Each row names when it ran and the load average (1 min) before and "
        "after it: above 0 means another job shared the cores.",
        "",
        "`bare fwd+bwd` = `model(input_ids, attention_mask, labels).loss.backward()` (HF: full-vocabulary logits, "
        "cross-entropy over action tokens); `bare + AdamW` adds clip + AdamW step; `learner` = `Learner.step` at the "
        "default settings (1 epoch x 1 minibatch, ppo, float32 log-probs and exact entropy, `micro_batch_tokens: auto`, "
        "its value in the table); `learner, before` = with the no-grad pre-pass, the lm_head at every position and "
        "one pass (the path before issue #14).",
        "",
        "| model | rounds | trainable / all params | rows x padded width (tokens, action tokens) | auto micro-batch | "
        "bare fwd+bwd s | bare + AdamW | learner | learner, before | ran (load before -> after) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, q = r["median_s"], r["ratio"]
        md.append(
            f"| {r['model']} | {r['rounds']} | {r['params_trainable'] / 1e6:.2f}M / {r['params'] / 1e6:.1f}M | "
            f"{r['rows']} x {r['padded_tokens'] // r['rows']} ({r['tokens']}, {r['action_tokens']}) | {r['micro_batch_tokens']} | "
            f"{m['bare fwd+bwd']:.3f} | {m['bare + AdamW']:.3f} s ({q['bare + AdamW']:.2f}x) | "
            f"{m['learner']:.3f} s (**{q['learner']:.2f}x**) | {m['learner, before']:.3f} s ({q['learner, before']:.2f}x) | {ran(r)} |"
        )
    write_results(stem, {"machine": info, "args": vars(args), "results": results}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
