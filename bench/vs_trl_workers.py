"""bench/vs_trl.py's two sides, each run in its own subprocess (one at a time) by the driver's run_worker:

    python bench/vs_trl_workers.py --worker eprl|trl --spec SPEC.json --worker-out OUT.json

`worker_eprl` runs `eprl train` in the eprl venv, `worker_trl` TRL's GRPOTrainer in the TRL venv (stdlib-only at
import, so either venv can load this file); both write the step ends and what they measured to OUT.json.
`worker_env` is the environment the driver gives them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK_FILE = REPO / "tasks" / "smollm2_add.yaml"
LORA = dict(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # eprl's model.lora defaults
LR = 5e-5
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
    sets = [
        f"model.name_or_path={spec['model_dir']}",
        f"task.group_size={w['samples']}",
        f"task.tasks_per_iteration={w['prompts']}",
        f"task.train.num_tasks={w['prompts']}",
        f"task.sampling.max_new_tokens={w['new_tokens']}",
        "task.sampling.temperature=1.0",
        f"task.agent.max_context_tokens={w['prompt_tokens'][1] + w['new_tokens'] + 16}",
        "task.eval.num_tasks=1",
        "task.eval_samples=1",
        "task.eval_sampling.max_new_tokens=1",
        f"learner.lr={LR}",
        "learner.kl_coef=0.0",
        "learner.epochs=1",
        "learner.minibatches=1",
        f"run.iterations={spec['steps']}",
        f"run.threads={spec['threads']}",
        "run.progress=false",
        "run.seed=0",
        "run.device=cpu",
        f"run.out_dir={run_root}",
        "run.name=run",
        f"run.checkpoint_every={spec['steps']}",
    ]
    if w.get("lora"):
        sets += [
            "model.lora=true",
            f"model.lora_rank={LORA['r']}",
            f"model.lora_alpha={LORA['lora_alpha']}",
            f"model.lora_target_modules=[{','.join(LORA['target_modules'])}]",
        ]
    sets += spec["sets"]
    cfg = load_run_config(TASK_FILE, overrides=sets)
    ends: list[float] = []
    lines: list[str] = []

    class StepEnds(logging.Handler):  # the loop logs one "[iter N] ..." line as each iteration ends
        def emit(self, record: logging.LogRecord) -> None:
            msg = record.getMessage()
            if msg.startswith("[iter"):
                ends.append(time.perf_counter())
            lines.append(msg)
            print(msg, flush=True)

    logger = logging.getLogger("eprl")
    logger.setLevel(logging.INFO)
    logger.addHandler(StepEnds())
    start = time.perf_counter()
    train(cfg)
    rows = [json.loads(ln) for ln in (run_root / "run" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    tokens = [
        r["rollout_tokens_per_s"] * r["time_rollout"] / r["episodes"]
        if {"rollout_tokens_per_s", "time_rollout", "episodes"} <= r.keys()
        else None
        for r in rows
    ]
    _write_json(
        out,
        {
            "side": spec["side"],
            "round": spec["round"],
            "sets": spec["sets"],
            "start": start,
            "step_ends": ends,
            "tokens_per_sample": tokens,
            "rows": rows,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
            "log_tail": lines[-5:],
        },
    )
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
            print(
                json.dumps({k: v for k, v in row.items() if "time" in k or "length" in k or k == "reward"}), flush=True
            )

    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    peft_config = None
    if w.get("lora"):
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **LORA)
    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": p["text"]}], "answer": p["answer"]} for p in spec["prompts"]]
    )

    def last_number(completions, answer, **_kwargs):
        return [
            last_number_reward(c[0]["content"] if isinstance(c, list) else c, a) for c, a in zip(completions, answer)
        ]

    n = w["prompts"] * w["samples"]
    args = GRPOConfig(
        output_dir=str(Path(spec["work_dir"]) / f"trl-r{spec['round']}"),
        max_steps=spec["steps"],
        per_device_train_batch_size=n,
        gradient_accumulation_steps=1,
        generation_batch_size=n,
        num_generations=w["samples"],
        num_iterations=1,
        max_completion_length=w["new_tokens"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        seed=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=last_number,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[Clock()],
        peft_config=peft_config,
    )
    start = time.perf_counter()
    trainer.train()
    tokens = [lg["completions/mean_length"] for lg in logs if "completions/mean_length" in lg]
    _write_json(
        out,
        {
            "side": "trl",
            "round": spec["round"],
            "sets": [],
            "start": start,
            "step_ends": ends,
            "tokens_per_sample": tokens,
            "rows": logs,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        },
    )
    shutil.rmtree(args.output_dir, ignore_errors=True)


def worker_env(threads: int, eprl: bool = True) -> dict:
    """The workers' environment: `threads` OpenMP threads, the `eprl` CLI's OpenMP wait policy on both sides,
    offline HF; the checkout on the path of the eprl side only (its top-level agents/ envs/ training/ folders stay out of the TRL venv's imports)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # what `eprl` (training/__main__.py) sets; the same for TRL
    if eprl:
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    else:
        env.pop("PYTHONPATH", None)
    return env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=["eprl", "trl"], required=True)
    p.add_argument("--spec", required=True)
    p.add_argument("--worker-out", required=True)
    args = p.parse_args()
    (worker_trl if args.worker == "trl" else worker_eprl)(_read_spec(args.spec), args.worker_out)


if __name__ == "__main__":
    main()
