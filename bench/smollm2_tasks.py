"""Start success of SmolLM2-135M-Instruct on candidate task formats, through the framework's own pipeline.

    python bench/smollm2_tasks.py [--tasks 32] [--samples 4]

Each format is a task suite plus overrides; the base model is evaluated on its held-out split at T=1
(the same env, agent, engine and evaluation code that training uses). The study's domains are picked from
these numbers: start success roughly 10-60%, short episodes. Output: bench/results/smollm2_tasks.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOL_PROMPT = (
    "You solve arithmetic. To use the calculator write <calc>EXPRESSION</calc> and wait for "
    "<result>VALUE</result>. Then give the final answer as \\boxed{NUMBER}."
)
FORMATS: dict[str, tuple[str, list[str]]] = {  # name -> (suite, overrides)
    "add 1-9, last number (domain A)": ("smollm2_add.yaml", []),
    "mul 2-9, last number (domain B)": ("smollm2_mul.yaml", []),
    "sub 10-20 minus 1-9, last number": (
        "smollm2_add.yaml",
        ["task.env.kwargs.generator_kwargs={ops: '-', low: 1, high: 20}"],
    ),
    "add 1-9, boxed answer": ("smollm2_add.yaml", ["task.env.kwargs.answer=boxed"]),
    "two-number arithmetic (d1), boxed": (
        "smollm2_add.yaml",
        ["task.env.kwargs={source: arithmetic, difficulty: 1, max_turns: 1}"],
    ),
    "calculator tool (d1), system prompt, 3 turns": (
        "default.yaml",
        [
            "task.env.kwargs={difficulty: 1, max_turns: 3}",
            "task.agent.max_turns=3",
            "task.agent.max_context_tokens=256",
            f"task.agent.system_prompt={TOOL_PROMPT!r}",
            "task.sampling.max_new_tokens=32",
            "task.eval_sampling.max_new_tokens=32",
        ],
    ),
    "countdown (3-4 numbers), boxed": (
        "smollm2_add.yaml",
        [
            "task.env.id=eprl/Countdown-v0",
            "task.env.kwargs={max_turns: 1}",
            "task.agent.max_context_tokens=192",
            "task.sampling.max_new_tokens=48",
            "task.eval_sampling.max_new_tokens=48",
        ],
    ),
}


def measure(name: str, suite: str, overrides: list[str], tasks: int, samples: int) -> dict:
    from eprl.agents import make_agent
    from eprl.agents.engines import make_engine
    from eprl.agents.rollout import RolloutRunner
    from eprl.training.config import load_run_config
    from eprl.training.evaluate import summarize
    from eprl.training.policy import env_factory, load_policy, resolve_model_path

    cfg = load_run_config(
        REPO / "tasks" / suite,
        None,
        [
            "model.name_or_path=smollm2-135m",
            "run.progress=false",
            f"task.eval.num_tasks={tasks}",
            f"task.eval_samples={samples}",
            *overrides,
        ],
    )
    model, tokenizer = load_policy(resolve_model_path(cfg), cfg)
    s = cfg.task
    runner = RolloutRunner(
        env_factory(s, "eval"),
        make_agent(s.agent.type, tokenizer, s.agent.system_prompt),
        make_engine("hf", model, tokenizer, cfg.engine),
        max_turns=s.agent.max_turns,
        max_context_tokens=s.agent.max_context_tokens,
        progress=False,
    )
    torch.manual_seed(0)
    t0 = time.perf_counter()
    trajectories, stats = runner.run(list(range(tasks)), samples, s.eval_sampling, seed=0, desc="eval")
    seconds = time.perf_counter() - t0
    result = summarize(trajectories)
    runner.close()
    gen = [t.num_action_tokens / max(t.num_turns, 1) for t in trajectories]
    return {
        "format": name,
        "suite": suite,
        "overrides": overrides,
        "success": result["eval_success"],
        "episodes": len(trajectories),
        "generated_tokens_per_turn": sum(gen) / len(gen),
        "turns_mean": sum(t.num_turns for t in trajectories) / len(trajectories),
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--formats",
        help="re-measure only formats whose name contains one of these comma-separated "
        "words; the other rows are kept from the existing results",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    stem = REPO / "bench" / "results" / "smollm2_tasks"
    old = {r["format"]: r for r in json.loads(stem.with_suffix(".json").read_text())["rows"]} if args.formats else {}
    wanted = [w.strip() for w in (args.formats or "").split(",") if w.strip()]
    rows = []
    for name, (suite, overrides) in FORMATS.items():
        if wanted and not any(w in name for w in wanted) and name in old:
            rows.append(old[name])
            continue
        rows.append(measure(name, suite, overrides, args.tasks, args.samples))
        print(rows[-1], flush=True)
    info = machine()
    md = [
        "# SmolLM2-135M-Instruct: start success by task format",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}, {args.threads} thread(s); {info['date']}.",
        f"Base model (GGUF Q4_1 dequantized to fp32), T=1, held-out split, {args.tasks} tasks x {args.samples} samples; "
        "`python bench/smollm2_tasks.py`.",
        "",
        "| format | suite + overrides | start success | generated tokens / turn | turns | seconds |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['format']} | `{r['suite']}` {' '.join(f'`{o}`' for o in r['overrides'])} | {r['success']:.3f} | "
        f"{r['generated_tokens_per_turn']:.1f} | {r['turns_mean']:.2f} | {r['seconds']:.0f} |"
        for r in rows
    ]
    write_results(stem, {"machine": info, "args": vars(args), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
