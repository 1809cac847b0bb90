"""eprl's `train` against TRL's `GRPOTrainer` on the same work (issue #14 item 1).

    python bench/vs_trl.py [--model tiny|smollm2-135m] [--lora] [--rounds 2] [--steps 4]
                           [--prompts 8] [--samples 8] [--new-tokens 48] [--threads 1]
                           [--eprl-set KEY=VALUE ...] [--eprl-variant 'NAME:KEY=VALUE;KEY=VALUE' ...]
                           [--trl-python PATH] [--eprl-python PATH] [--setup-trl-venv]

The work, the same on both sides:
- model: `tiny` = a random-init Llama of 15.7M parameters (hidden 256, 4 layers, 4 heads, MLP 688, tied
  embeddings) with the SmolLM2 tokenizer (vocab 49,152), built once with seed 0 and saved to
  `$EPRL_CACHE/bench/`: its output is near uniform over the vocabulary, so a sample practically never ends
  before the token budget; `smollm2-135m` = SmolLM2-135M-Instruct from the packaged GGUF file (converted to a
  float32 HF directory by training/model_source.py); `--lora` trains eprl's default LoRA (r 16, alpha 32,
  q/k/v/o) on both sides;
- prompts: `--prompts` single-digit additions of eprl's math env (tasks/smollm2_add.yaml: "What is 7 + 5?
  Answer with a number."), the same text through the tokenizer's chat template on both sides; every step
  trains on all of them (eprl: `task.train.num_tasks = tasks_per_iteration`; TRL: a dataset of exactly
  those prompts, one generation batch per step);
- `--samples` samples per prompt, `--new-tokens` new tokens at temperature 1, no top-k / top-p;
- reward: the last number in the reply equals the sum (eprl: the env's `last_number` rule; TRL: the same
  regex and exact comparison in a reward function);
- one optimizer step per batch (eprl: epochs = minibatches = 1; TRL: steps_per_generation = num_iterations
  = gradient_accumulation_steps = 1, generation_batch_size = prompts x samples), no KL and no reference model
  (eprl kl_coef 0, TRL beta 0), PPO clip 0.2 with the token mean over the batch (eprl `ppo` + `token_mean`,
  TRL `loss_type: dapo`), group-std advantages, AdamW (torch.optim.AdamW: TRL `optim: adamw_torch`) at
  lr 5e-5 constant, weight decay 0, gradient clip 1.0; fp32, `--threads` torch threads, on the CPU;
  TRL generates with transformers `generate` (use_vllm off), eprl with its `hf` engine; TRL's GRPO defaults
  gradient checkpointing and bf16 are turned off (eprl does neither).

Each side runs in its own subprocess, one at a time, in alternating rounds (eprl, its variants, TRL; then
again). A step's time is the wall time between the ends of two consecutive steps (eprl: the iteration's log
line; TRL: `on_step_end`): everything a step costs, generation, reward, learning, optimizer, logging. The
first step of each process is a warm-up and left out (process start to its end is recorded apart). Figures:
medians over all timed steps of all rounds (per-round medians beside them); `TRL / eprl` is TRL's median over
eprl's. Samples that stop early (EOS) do less work: generated tokens per sample are measured and reported.
Output: bench/results/vs_trl.{json,md}, one table per model (a run replaces only its model's entry).

TRL runs in its own virtualenv (its pins may differ from eprl's). `--setup-trl-venv` creates it at
`--trl-python`'s venv (default /work/trl-venv) the way it was made for the first results:

    python3.11 -m venv /work/trl-venv
    /work/trl-venv/bin/pip install torch==2.13.0          # the eprl venv's torch, pinned so pip pulls no other
    /work/trl-venv/bin/pip install torch==2.13.0 trl==1.16.0 peft==<the eprl venv's peft>

and the script checks (and records) torch, transformers and trl versions on both sides before it starts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
DEFAULT_TRL_PYTHON = "/work/trl-venv/bin/python"
TRL_VERSION = "1.16.0"
TASK_FILE = REPO / "tasks" / "smollm2_add.yaml"
# the random model: ~15.7M parameters, 12.6M of them the (tied) 49,152 x 256 embedding
TINY = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
            tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5)
LORA = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # eprl's model.lora defaults
LR = 5e-5
TARGETS = {"eprl": 1.5, "overlap": 2.0}  # issue #14's acceptance: speed-up over TRL (a variant named overlap*: 2x)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")  # envs/math/verify.py's last-number rule
_PLAIN_NUMBER = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+)(\.\d+)?$")


# ----------------------------------------------------------------------------- pure parts (tested)
def last_number_reward(text: str, gold: str) -> float:
    """1.0 when the last number of `text` equals `gold`: eprl's `last_number` answer rule and its plain-number
    check (envs/math/verify.py: extract_last_number, then check_math's exact fast path)."""
    numbers = _NUMBER.findall(text.replace(",", ""))
    if not numbers or not _PLAIN_NUMBER.match(numbers[-1]) or not _PLAIN_NUMBER.match(gold.strip()):
        return 0.0
    return float(Fraction(numbers[-1]) == Fraction(gold.strip().replace(",", "")))


def step_times(ends: list[float], warmup: int = 1) -> list[float]:
    """Wall time of each step after the first `warmup` ones, from the times at which steps ended."""
    first = max(warmup, 1)
    return [b - a for a, b in zip(ends[first - 1:], ends[first:])]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'NAME:KEY=VALUE;KEY=VALUE' -> (NAME, [KEY=VALUE, ...]) for an extra eprl side."""
    name, sep, sets = text.partition(":")
    if not sep or not name.strip() or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name.strip()):
        raise ValueError(f"--eprl-variant {text!r}: expected NAME:KEY=VALUE[;KEY=VALUE...], NAME of letters, digits, _.+-")
    items = [s.strip() for s in sets.split(";") if s.strip()]
    bad = [s for s in items if "=" not in s]
    if bad:
        raise ValueError(f"--eprl-variant {text!r}: {bad[0]!r} is not KEY=VALUE")
    return name.strip(), items


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Worker results (each {side, round, step_ends, ...}) -> per side: timed steps, medians, TRL / side.

    A side's median is over all its timed steps of all rounds; `round_medians` are per round. `speedup` is
    TRL's median over the side's (> 1: the side is faster); it is absent when no TRL run was timed."""
    sides: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (r["round"], r["side"])):
        s = sides.setdefault(run["side"], {"side": run["side"], "sets": run.get("sets", []), "steps": [],
                                           "round_medians": [], "first_step_s": [], "tokens_per_sample": [],
                                           "rounds": 0})
        times = step_times(run["step_ends"])
        s["rounds"] += 1
        s["steps"] += times
        if times:
            s["round_medians"].append(statistics.median(times))
        if run.get("step_ends") and run.get("start") is not None:
            s["first_step_s"].append(run["step_ends"][0] - run["start"])
        s["tokens_per_sample"] += [t for t in run.get("tokens_per_sample", []) if t is not None]
    for s in sides.values():
        s["median_s"] = statistics.median(s["steps"]) if s["steps"] else None
        s["tokens_per_sample_mean"] = statistics.fmean(s["tokens_per_sample"]) if s["tokens_per_sample"] else None
    trl = sides.get("trl", {}).get("median_s")
    for s in sides.values():
        s["speedup"] = trl / s["median_s"] if trl and s["median_s"] else None
    return sides


def target_of(side: str, sets: list[str] = ()) -> float | None:
    """The speed-up over TRL the issue asks of a side: 2x of the overlapped mode (a side with
    `run.overlap=true`, or a variant named overlap*), 1.5x of the default eprl side; None for others."""
    overlap = any(x.replace(" ", "").lower() == "run.overlap=true" for x in sets) or side.startswith("eprl:overlap")
    if overlap:
        return TARGETS["overlap"]
    return TARGETS["eprl"] if side == "eprl" else None


def render_model(entry: dict) -> list[str]:
    """One model's section of vs_trl.md from its JSON entry."""
    w, info = entry["workload"], entry["machine"]
    v = entry["versions"]
    lines = [f"## {entry['model_label']}", "",
             f"{w['prompts']} prompts x {w['samples']} samples, {w['new_tokens']} new tokens, T=1, one optimizer step "
             f"per batch, no KL, {'LoRA (r 16, q/k/v/o)' if w.get('lora') else 'all weights'}, fp32, "
             f"{w['threads']} torch thread(s) per process; {entry['params'] / 1e6:.1f}M parameters "
             f"({entry['params_trainable'] / 1e6:.2f}M trained), prompt {w['prompt_tokens'][0]}-{w['prompt_tokens'][1]} "
             f"tokens; {entry['rounds']} alternating round(s) of {entry['steps']} steps, the first step of each "
             "process left out.", "",
             f"Machine: {info['cpu_model']}, {info['cores']} cores; python {info['python']}; {info['date']}; load "
             f"average {entry['load'][0]:.2f} before, {entry['load'][1]:.2f} after. eprl: torch {v['eprl']['torch']}, "
             f"transformers {v['eprl']['transformers']}; TRL: trl {v['trl'].get('trl', '-')}, torch "
             f"{v['trl'].get('torch', '-')}, transformers {v['trl'].get('transformers', '-')}.",
             f"Command: `{entry['command']}`", "",
             "| side | settings | s / step, median | per-round medians | timed steps | TRL / side | target | "
             "tokens / sample | first step s |", "|---|---|---|---|---|---|---|---|---|"]
    order = sorted(entry["sides"].values(), key=lambda s: (s["side"] == "trl", s["side"] != "eprl", s["side"]))
    for s in order:
        med = f"{s['median_s']:.2f}" if s["median_s"] is not None else "-"
        per = ", ".join(f"{m:.2f}" for m in s["round_medians"]) or "-"
        sp = f"**{s['speedup']:.2f}x**" if s["speedup"] is not None and s["side"] != "trl" else ("1" if s["side"] == "trl" else "-")
        tgt = target_of(s["side"], s["sets"])
        mark = "" if tgt is None or s["speedup"] is None else (" met" if s["speedup"] >= tgt else " not met")
        tok = f"{s['tokens_per_sample_mean']:.1f}" if s["tokens_per_sample_mean"] is not None else "-"
        first = ", ".join(f"{x:.1f}" for x in s["first_step_s"]) or "-"
        sets = "; ".join(f"`{x}`" for x in s["sets"]) or ("TRL GRPOTrainer" if s["side"] == "trl" else "defaults")
        lines.append(f"| {s['side']} | {sets} | {med} | {per} | {len(s['steps'])} | {sp} | "
                     f"{'-' if tgt is None else f'{tgt:g}x{mark}'} | {tok} | {first} |")
    if entry.get("notes"):
        lines += [""] + [f"- {n}" for n in entry["notes"]]
    return lines + [""]


def render_markdown(result: dict) -> str:
    md = ["# eprl `train` vs TRL `GRPOTrainer` on the same work (issue #14)", "",
          "Each side in its own process, one at a time, alternating rounds; a step = the wall time between the "
          "ends of two consecutive steps (generation, reward, update, logging); medians over the timed steps of "
          "all rounds. `TRL / side` > 1: the side is faster than TRL. Acceptance (issue #14): eprl >= 1.5x TRL "
          "(synchronous), the overlapped mode >= 2x. `python bench/vs_trl.py --help` says how the work is made "
          "equal; the notes under each table name what could not be.", ""]
    order = ["tiny", "tiny-lora", "smollm2-135m", "smollm2-135m-lora"]
    for key in sorted(result["models"], key=lambda k: (order.index(k) if k in order else len(order), k)):
        md += render_model(result["models"][key])
    return "\n".join(md)


# ----------------------------------------------------------------------------- workers (subprocesses)
def _read_spec(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def worker_eprl(spec: dict, out: str) -> None:
    """`eprl train` (training.loop.train, what the CLI calls) on the spec's work; step ends from its log."""
    import torch
    import transformers
    torch.set_num_threads(spec["threads"])
    from eprl.training.config import load_run_config
    from eprl.training.loop import train
    run_root = Path(spec["work_dir"]) / f"eprl-{spec['side'].replace(':', '_')}-r{spec['round']}"
    shutil.rmtree(run_root, ignore_errors=True)
    w = spec["workload"]
    sets = [f"model.name_or_path={spec['model_dir']}", f"task.group_size={w['samples']}",
            f"task.tasks_per_iteration={w['prompts']}", f"task.train.num_tasks={w['prompts']}",
            f"task.sampling.max_new_tokens={w['new_tokens']}", "task.sampling.temperature=1.0",
            f"task.agent.max_context_tokens={w['prompt_tokens'][1] + w['new_tokens'] + 16}",
            "task.eval.num_tasks=1", "task.eval_samples=1", "task.eval_sampling.max_new_tokens=1",
            f"learner.lr={LR}", "learner.kl_coef=0.0", "learner.epochs=1", "learner.minibatches=1",
            f"run.iterations={spec['steps']}", f"run.threads={spec['threads']}", "run.progress=false", "run.seed=0",
            "run.device=cpu", f"run.out_dir={run_root}", "run.name=run", f"run.checkpoint_every={spec['steps']}"]
    if w.get("lora"):
        sets += ["model.lora=true", f"model.lora_rank={LORA['r']}", f"model.lora_alpha={LORA['lora_alpha']}",
                 f"model.lora_target_modules=[{','.join(LORA['target_modules'])}]"]
    sets += spec["sets"]
    cfg = load_run_config(TASK_FILE, overrides=sets)
    ends: list[float] = []
    lines: list[str] = []

    def log(*args, **_kwargs) -> None:
        msg = " ".join(str(a) for a in args)
        if msg.startswith("[iter"):
            ends.append(time.perf_counter())
        lines.append(msg)
        print(msg, flush=True)

    start = time.perf_counter()
    train(cfg, log=log)
    rows = [json.loads(ln) for ln in (run_root / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    tokens = [r["rollout_tokens_per_s"] * r["time_rollout"] / r["episodes"] if {"rollout_tokens_per_s", "time_rollout",
              "episodes"} <= r.keys() else None for r in rows]
    _write_json(out, {"side": spec["side"], "round": spec["round"], "sets": spec["sets"], "start": start,
                      "step_ends": ends, "tokens_per_sample": tokens, "rows": rows,
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                      "log_tail": lines[-5:]})
    shutil.rmtree(run_root, ignore_errors=True)


def worker_trl(spec: dict, out: str) -> None:
    """TRL's GRPOTrainer on the spec's work; step ends from a callback's on_step_end."""
    import torch
    torch.set_num_threads(spec["threads"])
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    w = spec["workload"]
    ends: list[float] = []
    logs: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

        def on_log(self, args, state, control, **kwargs):
            row = dict(kwargs.get("logs") or {})
            logs.append(row)
            print(json.dumps({k: v for k, v in row.items() if "time" in k or "length" in k or k == "reward"}), flush=True)

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    peft_config = None
    if w.get("lora"):
        from peft import LoraConfig
        peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p["text"]}], "answer": p["answer"]}
                              for p in spec["prompts"]])

    def last_number(completions, answer, **_kwargs):
        return [last_number_reward(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)]

    n = w["prompts"] * w["samples"]
    args = GRPOConfig(
        output_dir=str(Path(spec["work_dir"]) / f"trl-r{spec['round']}"), max_steps=spec["steps"],
        per_device_train_batch_size=n, gradient_accumulation_steps=1, generation_batch_size=n,
        num_generations=w["samples"], num_iterations=1, max_completion_length=w["new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", use_vllm=False, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        seed=0, logging_steps=1,
        save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=last_number, args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Clock()], peft_config=peft_config)
    start = time.perf_counter()
    trainer.train()
    tokens = [lg["completions/mean_length"] for lg in logs if "completions/mean_length" in lg]
    _write_json(out, {"side": "trl", "round": spec["round"], "sets": [], "start": start, "step_ends": ends,
                      "tokens_per_sample": tokens, "rows": logs,
                      "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                   "trl": trl.__version__}})
    shutil.rmtree(args.output_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- driver
def worker_env(threads: int, eprl: bool = True) -> dict:
    """The workers' environment: `threads` OpenMP threads, the `eprl` CLI's OpenMP wait policy on both sides,
    offline HF; the checkout on the path of the eprl side only (its top-level agents/ envs/ training/ folders stay out of the TRL venv's imports)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what `eprl` (training/__main__.py) sets; the same for TRL
    if eprl:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    else:
        env.pop("PYTHONPATH", None)
    return env


def python_versions(python: str, modules: tuple[str, ...]) -> dict:
    code = ("import json, importlib\nout = {}\nfor m in %r:\n    try:\n        out[m] = importlib.import_module(m)"
            ".__version__\n    except Exception as e:\n        out[m] = None\nprint(json.dumps(out))" % (modules,))
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, env=worker_env(1, "eprl" in modules),
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"{python}: cannot report versions: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def setup_trl_venv(trl_python: str, torch_version: str, peft_version: str | None) -> None:
    """Create the TRL venv with the eprl side's torch pinned (see the module docstring)."""
    venv = Path(trl_python).parent.parent
    if not Path(trl_python).exists():
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    pip = [trl_python, "-m", "pip", "install", "-q"]
    base = torch_version.split("+")[0]
    subprocess.run(pip + [f"torch=={base}"], check=True)
    subprocess.run(pip + [f"torch=={base}", f"trl=={TRL_VERSION}"] + ([f"peft=={peft_version}"] if peft_version else []),
                   check=True)


def build_tiny(tokenizer_dir: Path, log=print) -> Path:
    """The random 15.7M Llama with the SmolLM2 tokenizer, saved once under $EPRL_CACHE/bench/ (seed 0)."""
    import hashlib

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from eprl.training.model_source import cache_root
    key = hashlib.sha256(json.dumps([TINY, str(tokenizer_dir.name)], sort_keys=True).encode()).hexdigest()[:12]
    target = cache_root() / "bench" / f"vs_trl-tiny-{key}"
    if (target / "config.json").is_file():
        return target
    log(f"building the random tiny Llama once at {target}")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id, **TINY)
    model = LlamaForCausalLM(config).float()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def make_prompts(count: int, tokenizer_dir: Path) -> tuple[list[dict], list[int]]:
    """The first `count` train tasks of tasks/smollm2_add.yaml: the env's first observation and gold answer,
    and the prompt lengths through the chat template (as both sides render them)."""
    from transformers import AutoTokenizer

    from eprl.training.config import load_task_suite
    from eprl.training.policy import env_factory
    env = env_factory(load_task_suite(TASK_FILE), "train")()
    prompts = []
    for i in range(count):
        obs, _info = env.reset(seed=i, options={"task_index": i})
        prompts.append({"text": obs, "answer": str(env.unwrapped.problem.answer)})
    env.close()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths = [len(tok(tok.apply_chat_template([{"role": "user", "content": p["text"]}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False)["input_ids"])
               for p in prompts]
    return prompts, lengths


NOTES = [
    "TRL's own defaults for GRPO turn on gradient checkpointing (a second forward in the backward) and bf16; both are "
    "off here (`gradient_checkpointing: false`, `bf16: false`): the same fp32 compute as eprl's.",
    "eprl samples with its `hf` engine, which also records each sampled token's log-prob (a log_softmax per step); "
    "TRL's `generate` path records none. Both sides then run one forward + backward over the batch.",
    "TRL's step includes its per-step logging (`logging_steps: 1`, for the completion lengths); eprl's includes "
    "its metrics row. Neither side evaluates or checkpoints inside the timed steps (eprl evaluates one task with one "
    "token before and after training, outside them; TRL `save_strategy: no`).",
    "A sample that samples EOS stops early on both sides; `tokens / sample` is the measured mean (the budget is the "
    "most): on the random model nearly every sample runs the full budget; on a trained model the two sides' lengths "
    "differ by chance.",
]


def run_worker(python: str, side: str, spec: dict, work: Path, threads: int, log_file: Path) -> dict:
    spec_path, out_path = work / f"spec-{side.replace(':', '_')}-r{spec['round']}.json", work / "out.json"
    _write_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    cmd = [python, str(Path(__file__).resolve()), "--worker", "trl" if side == "trl" else "eprl",
           "--spec", str(spec_path), "--worker-out", str(out_path)]
    t0 = time.perf_counter()
    with open(log_file, "a") as fh:
        fh.write(f"\n===== {side} round {spec['round']}: {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=worker_env(threads, side != "trl"))
    if proc.returncode != 0 or not out_path.is_file():
        raise SystemExit(f"{side} round {spec['round']} failed (exit {proc.returncode}); see {log_file}")
    result = json.loads(out_path.read_text())
    result["process_s"] = time.perf_counter() - t0
    times = step_times(result["step_ends"])
    print(f"round {spec['round']} {side}: {len(result['step_ends'])} steps, timed "
          f"{', '.join(f'{t:.2f}' for t in times)} s; process {result['process_s']:.0f} s", flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"])
    p.add_argument("--lora", action="store_true", help="train eprl's default LoRA (r 16, q/k/v/o) on both sides")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps per process; the first is a warm-up (>= 2)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eprl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="--set override for every eprl side (repeatable), recorded with the results")
    p.add_argument("--eprl-variant", action="append", default=[], metavar="NAME:KEY=VALUE;KEY=VALUE",
                   help="an extra eprl side per round (e.g. 'overlap:run.overlap=true'), beside the default one")
    p.add_argument("--no-eprl-default", action="store_true", help="run only the --eprl-variant sides on eprl's part")
    p.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON)
    p.add_argument("--eprl-python", default=sys.executable)
    p.add_argument("--setup-trl-venv", action="store_true", help="create/complete the TRL venv first (pip)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "vs_trl"), help="results stem (.json, .md)")
    p.add_argument("--work-dir", default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--worker", choices=["eprl", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        (worker_trl if args.worker == "trl" else worker_eprl)(_read_spec(args.spec), args.worker_out)
        return
    if args.steps < 2:
        p.error("--steps must be >= 2: the first step of each process is a warm-up")
    variants = [("eprl", list(args.eprl_set))] if not args.no_eprl_default else []
    for text in args.eprl_variant:
        try:
            name, sets = parse_variant(text)
        except ValueError as err:
            p.error(str(err))
        variants.append((f"eprl:{name}", list(args.eprl_set) + sets))
    if not variants:
        p.error("--no-eprl-default needs at least one --eprl-variant")

    import torch
    import transformers
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(BENCH))
    from bench_io import machine, write_results

    from eprl.training.model_source import resolve_model_source
    eprl_versions = python_versions(args.eprl_python, ("torch", "transformers", "peft", "eprl"))
    if args.setup_trl_venv:
        setup_trl_venv(args.trl_python, eprl_versions["torch"], eprl_versions.get("peft"))
    if not Path(args.trl_python).exists():
        p.error(f"--trl-python {args.trl_python} does not exist; run with --setup-trl-venv (see --help)")
    trl_versions = python_versions(args.trl_python, ("torch", "transformers", "trl", "peft"))
    if trl_versions.get("trl") is None:
        p.error(f"{args.trl_python} has no trl; run with --setup-trl-venv")
    notes = list(NOTES)
    for mod in ("torch", "transformers"):
        if trl_versions.get(mod) != eprl_versions.get(mod):
            notes.append(f"{mod} differs: eprl side {eprl_versions.get(mod)}, TRL side {trl_versions.get(mod)}.")
    print(f"eprl side: {eprl_versions}; TRL side: {trl_versions}", flush=True)

    smol_dir = Path(resolve_model_source("smollm2-135m"))
    model_dir = build_tiny(smol_dir) if args.model == "tiny" else smol_dir
    prompts, lengths = make_prompts(args.prompts, smol_dir)
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        meta = transformers.AutoModelForCausalLM.from_config(cfg)
    params = sum(x.numel() for x in meta.parameters())
    trainable = params
    if args.lora:
        from peft import LoraConfig, get_peft_model
        trainable = sum(x.numel() for x in get_peft_model(meta, LoraConfig(task_type="CAUSAL_LM", **LORA)).parameters()
                        if x.requires_grad)
    workload = {"prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens, "threads": args.threads,
                "lora": args.lora, "prompt_tokens": [min(lengths), max(lengths)]}
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "workers.log"
    print(f"model {model_dir} ({params / 1e6:.2f}M params); workers' output: {log_file}", flush=True)
    load_before = os.getloadavg()[0]
    runs = []
    for r in range(args.rounds):
        for side, sets in variants + [("trl", [])]:
            spec = {"side": side, "round": r, "sets": sets, "steps": args.steps, "threads": args.threads,
                    "model_dir": str(model_dir), "work_dir": str(work), "workload": workload, "prompts": prompts}
            python = args.trl_python if side == "trl" else args.eprl_python
            runs.append(run_worker(python, side, spec, work, args.threads, log_file))
    load_after = os.getloadavg()[0]
    sides = aggregate(runs)
    key = args.model + ("-lora" if args.lora else "")
    label = {"tiny": "Random Llama 15.7M (SmolLM2 tokenizer)", "smollm2-135m": "SmolLM2-135M-Instruct"}[args.model]
    command = "python bench/vs_trl.py " + " ".join(a for a in sys.argv[1:])
    entry = {"model": key, "model_label": label + (" + LoRA" if args.lora else ""), "model_dir": str(model_dir),
             "params": params, "params_trainable": trainable, "workload": workload, "rounds": args.rounds,
             "steps": args.steps, "machine": machine(), "load": [load_before, load_after], "command": command.strip(),
             "versions": {"eprl": eprl_versions, "trl": trl_versions}, "sides": sides, "notes": notes,
             "runs": [{k: v for k, v in run.items() if k != "rows"} | {"rows": run.get("rows", [])} for run in runs]}
    stem = Path(args.out)
    result = {"models": {}}
    if stem.with_suffix(".json").is_file():  # keep the other models' entries of an earlier run
        result = json.loads(stem.with_suffix(".json").read_text())
    result["models"][key] = entry
    md = render_markdown(result)
    write_results(stem, result, md)
    print(md)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
