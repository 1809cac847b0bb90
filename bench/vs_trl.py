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

This file is the driver (CLI, venv, model, prompts, rounds); bench/vs_trl_workers.py holds the two sides'
subprocess bodies (`python bench/vs_trl_workers.py --worker eprl|trl ...`), bench/vs_trl_report.py the
medians, speed-ups and the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from vs_trl_report import aggregate, render_markdown, step_times  # noqa: E402
from vs_trl_workers import LORA, REPO, TASK_FILE, _write_json, worker_env  # noqa: E402

DEFAULT_TRL_PYTHON = "/work/trl-venv/bin/python"
TRL_VERSION = "1.16.0"
# the random model: ~15.7M parameters, 12.6M of them the (tied) 49,152 x 256 embedding
TINY = dict(
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
)


# ----------------------------------------------------------------------------- driver
def parse_variant(text: str) -> tuple[str, list[str]]:
    """'NAME:KEY=VALUE;KEY=VALUE' -> (NAME, [KEY=VALUE, ...]) for an extra eprl side."""
    name, sep, sets = text.partition(":")
    if not sep or not name.strip() or not re.fullmatch(r"[A-Za-z0-9_.+-]+", name.strip()):
        raise ValueError(
            f"--eprl-variant {text!r}: expected NAME:KEY=VALUE[;KEY=VALUE...], NAME of letters, digits, _.+-"
        )
    items = [s.strip() for s in sets.split(";") if s.strip()]
    bad = [s for s in items if "=" not in s]
    if bad:
        raise ValueError(f"--eprl-variant {text!r}: {bad[0]!r} is not KEY=VALUE")
    return name.strip(), items


def python_versions(python: str, modules: tuple[str, ...]) -> dict:
    code = (
        "import json, importlib\nout = {}\nfor m in %r:\n    try:\n        out[m] = importlib.import_module(m)"
        ".__version__\n    except Exception as e:\n        out[m] = None\nprint(json.dumps(out))" % (modules,)
    )
    proc = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=worker_env(1, "eprl" in modules), timeout=600
    )
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
    subprocess.run(
        pip + [f"torch=={base}", f"trl=={TRL_VERSION}"] + ([f"peft=={peft_version}"] if peft_version else []),
        check=True,
    )


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
    config = LlamaConfig(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        **TINY,
    )
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
    lengths = [
        len(
            tok(
                tok.apply_chat_template(
                    [{"role": "user", "content": p["text"]}], tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for p in prompts
    ]
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
    "TRL 1.16 scores the batch through its chunked LM head (`trl/kernels/chunked_logprob.py`: log-probs and entropy "
    "without materialising the logits); off CUDA/XPU its tiles run as torch ops over every position, prompt included "
    "(in a profile of TRL's step on the random 15.7M model, 2026-12-05: 28 of 36 s, generation 6 s).",
]


def run_worker(python: str, side: str, spec: dict, work: Path, threads: int, log_file: Path) -> dict:
    spec_path, out_path = work / f"spec-{side.replace(':', '_')}-r{spec['round']}.json", work / "out.json"
    _write_json(spec_path, spec)
    out_path.unlink(missing_ok=True)
    cmd = [
        python,
        str(BENCH / "vs_trl_workers.py"),
        "--worker",
        "trl" if side == "trl" else "eprl",
        "--spec",
        str(spec_path),
        "--worker-out",
        str(out_path),
    ]
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
    print(
        f"round {spec['round']} {side}: {len(result['step_ends'])} steps, timed "
        f"{', '.join(f'{t:.2f}' for t in times)} s; process {result['process_s']:.0f} s",
        flush=True,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"])
    p.add_argument("--lora", action="store_true", help="train eprl's default LoRA (r 16, q/k/v/o) on both sides")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="steps per process; the first is a warm-up (>= 2)")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--eprl-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--set override for every eprl side (repeatable), recorded with the results",
    )
    p.add_argument(
        "--eprl-variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE;KEY=VALUE",
        help="an extra eprl side per round (e.g. 'overlap:run.overlap=true'), beside the default one",
    )
    p.add_argument("--no-eprl-default", action="store_true", help="run only the --eprl-variant sides on eprl's part")
    p.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON)
    p.add_argument("--eprl-python", default=sys.executable)
    p.add_argument("--setup-trl-venv", action="store_true", help="create/complete the TRL venv first (pip)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "vs_trl"), help="results stem (.json, .md)")
    p.add_argument("--work-dir", default=None, help="scratch directory (default: a temporary one)")
    args = p.parse_args()
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

        trainable = sum(
            x.numel()
            for x in get_peft_model(meta, LoraConfig(task_type="CAUSAL_LM", **LORA)).parameters()
            if x.requires_grad
        )
    workload = {
        "prompts": args.prompts,
        "samples": args.samples,
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "lora": args.lora,
        "prompt_tokens": [min(lengths), max(lengths)],
    }
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="vs_trl-"))
    work.mkdir(parents=True, exist_ok=True)
    log_file = work / "workers.log"
    print(f"model {model_dir} ({params / 1e6:.2f}M params); workers' output: {log_file}", flush=True)
    load_before = os.getloadavg()[0]
    runs = []
    for r in range(args.rounds):
        for side, sets in variants + [("trl", [])]:
            spec = {
                "side": side,
                "round": r,
                "sets": sets,
                "steps": args.steps,
                "threads": args.threads,
                "model_dir": str(model_dir),
                "work_dir": str(work),
                "workload": workload,
                "prompts": prompts,
            }
            python = args.trl_python if side == "trl" else args.eprl_python
            runs.append(run_worker(python, side, spec, work, args.threads, log_file))
    load_after = os.getloadavg()[0]
    sides = aggregate(runs)
    key = args.model + ("-lora" if args.lora else "")
    label = {"tiny": "Random Llama 15.7M (SmolLM2 tokenizer)", "smollm2-135m": "SmolLM2-135M-Instruct"}[args.model]
    command = "python bench/vs_trl.py " + " ".join(a for a in sys.argv[1:])
    entry = {
        "model": key,
        "model_label": label + (" + LoRA" if args.lora else ""),
        "model_dir": str(model_dir),
        "params": params,
        "params_trainable": trainable,
        "workload": workload,
        "rounds": args.rounds,
        "steps": args.steps,
        "machine": machine(),
        "load": [load_before, load_after],
        "command": command.strip(),
        "versions": {"eprl": eprl_versions, "trl": trl_versions},
        "sides": sides,
        "notes": notes,
        "runs": [{k: v for k, v in run.items() if k != "rows"} | {"rows": run.get("rows", [])} for run in runs],
    }
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
