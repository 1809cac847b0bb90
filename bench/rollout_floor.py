"""HF generation against the model's own forward cost per token (issue #14, item 3).

    python bench/rollout_floor.py [--rounds 3] [--prompts 64] [--prompt-tokens 48] [--new-tokens 32]
                                  [--models tiny,smollm2] [--threads 1]

Same prompts (random token ids, equal length: no padding question), temperature 1, no stop token, so every
row generates exactly --new-tokens tokens. Per round, one after the other:
- `engine`: agents/engines/hf.py `HFEngine.generate` as it is now (its own decode loop: inverse-CDF draw,
  log-probs per step, finished rows dropped);
- `engine, output_logits`: transformers `generate` with every step's logits kept, stacked and normalised (the
  engine's path before issue #14), sampling the full distribution (`top_k=0`: left None, transformers 5 fills
  in top_k=50, which the engine did until 2026-12-05);
- `engine, bfloat16`: the same with `engine.dtype: bfloat16` (samples from a bfloat16 copy of the weights);
- `floor`: a bare decode loop: one prefill forward, then per step one forward of the last token with the
  DynamicCache, log_softmax in float32 and torch.multinomial: the model's forward cost per token plus
  the least sampling any engine must do.
tokens/s = generated tokens / wall time; ratios against `floor`; medians over rounds after a warm-up round.
Output: bench/results/rollout_floor.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def load(name: str):
    from eprl.training.config import load_run_config
    from eprl.training.policy import load_policy, resolve_model_path

    sets = ["model.name_or_path=smollm2-135m"] if name == "smollm2" else []
    cfg = load_run_config(REPO / "tasks" / "default.yaml", overrides=sets)
    return load_policy(resolve_model_path(cfg), cfg)


@torch.no_grad()
def floor(model, ids: torch.Tensor, new_tokens: int) -> int:
    from transformers import DynamicCache

    cache = DynamicCache()
    last = torch.tensor([ids.shape[1] - 1])  # by index: a contiguous row for the head (see HFEngine._prefill)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=last)
    tokens = []
    for step in range(new_tokens):
        logp = F.log_softmax(out.logits[:, -1].float(), -1)
        nxt = torch.multinomial(logp.exp(), 1)
        tokens.append((nxt, logp.gather(-1, nxt)))
        if step + 1 < new_tokens:
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
    return len(tokens) * len(ids)


@torch.no_grad()
def output_logits_path(model, ids: torch.Tensor, new_tokens: int, pad_id: int) -> int:
    from transformers import GenerationConfig

    cfg = GenerationConfig(
        do_sample=True,
        temperature=1.0,
        top_k=0,  # None would be filled with transformers' default of 50
        max_new_tokens=new_tokens,
        eos_token_id=[],
        pad_token_id=pad_id,
        return_dict_in_generate=True,
        output_logits=True,
    )
    res = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
    new = res.sequences[:, ids.shape[1] :]
    logp = F.log_softmax(torch.stack(res.logits, 1).float(), -1).gather(-1, new[..., None]).squeeze(-1)
    return logp.numel()


def bench_model(name: str, args) -> dict:
    from eprl.agents.engines.hf import HFEngine
    from eprl.training.config import SamplingConfig

    model, tok = load(name)
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, len(tok), (args.prompts, args.prompt_tokens), generator=g)
    engine = HFEngine(model, tok, batch_size=args.prompts)
    engine_bf16 = HFEngine(model, tok, batch_size=args.prompts, dtype="bfloat16")
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens)

    def run_engine(eng) -> int:
        gens = eng.generate(ids.tolist(), sampling, stop_token_ids=[])
        return sum(len(x.token_ids) for x in gens)

    variants = {
        "engine": lambda: run_engine(engine),
        "engine, bfloat16": lambda: run_engine(engine_bf16),
        "engine, output_logits": lambda: output_logits_path(model, ids, args.new_tokens, engine.pad_id),
        "floor": lambda: floor(model, ids, args.new_tokens),
    }
    tps: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds + 1):
        for v, fn in variants.items():
            t0 = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t0
            assert n == args.prompts * args.new_tokens, (v, n)
            if r > 0:
                tps[v].append(n / dt)
        print(name, r, {v: round(x[-1], 1) for v, x in tps.items() if x}, flush=True)
    med = {v: statistics.median(x) for v, x in tps.items()}
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tok),
        "tokens_per_s": tps,
        "median_tokens_per_s": med,
        "vs_floor": {v: med[v] / med["floor"] for v in med},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--models", default="tiny,smollm2")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_before = [round(x, 2) for x in os.getloadavg()]
    results = [bench_model(m, args) for m in args.models.split(",")]
    info = machine()
    md = [
        "# HF generation vs the model's forward cost per token (issue #14)",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, {args.threads} torch thread(s); "
        f"{info['date']}. `python bench/rollout_floor.py --rounds {args.rounds} --prompts {args.prompts} "
        f"--prompt-tokens {args.prompt_tokens} --new-tokens {args.new_tokens}`.",
        f"Load average {load_before} before, {[round(x, 2) for x in os.getloadavg()]} after: compare within a row; "
        "variants alternate in every round, medians over rounds (warm-up left out).",
        "",
        "`floor` = one prefill, then per step one cached forward of the last token + float32 log_softmax + multinomial "
        "(no padding, no stop check). `engine` = HFEngine.generate now (own decode loop); `engine, output_logits` = "
        "transformers `generate` with all steps' logits kept and stacked (its path before issue #14), top_k=0; "
        "`engine, bfloat16` = the engine with `engine.dtype: bfloat16` (a bf16 copy of the weights; another "
        "distribution by bf16 rounding, so not a like-for-like speed-up: see README, Speed and memory).",
        "",
        "| model | params | floor tokens/s | engine | engine, output_logits | engine, bfloat16 |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        m, q = r["median_tokens_per_s"], r["vs_floor"]
        md.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {m['floor']:.0f} | {m['engine']:.0f} ({q['engine']:.2f}x) | "
            f"{m['engine, output_logits']:.0f} ({q['engine, output_logits']:.2f}x) | "
            f"{m['engine, bfloat16']:.0f} ({q['engine, bfloat16']:.2f}x) |"
        )
    write_results(
        REPO / "bench" / "results" / "rollout_floor",
        {"machine": info, "args": vars(args), "results": results},
        "\n".join(md) + "\n",
    )
    print("\n".join(md))


if __name__ == "__main__":
    main()
