"""`eprl` command line: train, eval, continue, envs, plot, config.

Configuration problems print one line naming the field and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from eprl.errors import EprlError

from .config import ConfigError, describe, load_run_config
from .logs import configure_logging

log = logging.getLogger("eprl.training.cli")

DEFAULT_TASK = Path(__file__).resolve().parent.parent / "tasks" / "default.yaml"


def _config_args(p: argparse.ArgumentParser, task_default=None) -> None:
    p.add_argument("--task", default=task_default, help="task suite YAML (tasks/*.yaml)")
    p.add_argument("--config", help="run config YAML (model, engine, learner, run sections)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any field, e.g. --set learner.lr=1e-5 (repeatable)",
    )


def _trust_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also load a trainer.pt holding pickled Python objects (from an older eprl); it can run code: "
        "only for checkpoints you wrote yourself",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eprl", description="Entropy-preserving RL for multi-turn LLM agents")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train on a task suite (default: the embedded tiny default)")
    _config_args(p)  # --task defaults to tasks/default.yaml later: --resume must see whether it was given
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly from its latest checkpoint")
    p.add_argument("--iterations", type=int, help="with --resume: extend the run to this many iterations")
    _trust_arg(p)
    p = sub.add_parser("continue", help="start a new run on another task suite from a checkpoint's weights")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    _config_args(p)
    _trust_arg(p)
    p = sub.add_parser("eval", help="evaluate a checkpoint (or the configured model) on a suite's eval split")
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run directory (default: the configured model)")
    _config_args(p, str(DEFAULT_TASK))
    sub.add_parser("envs", help="list registered environment ids")
    p = sub.add_parser("plot", help="plot metrics of one or more runs (overlaid)")
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="output directory for PNGs (default: RUN_DIR/plots; required with several runs)")
    p = sub.add_parser(
        "entropy-check",
        help="the learner section with and without entropy control on a tabular "
        "policy in closed loop (seconds on a CPU; training/tabular_testbed.py)",
    )
    p.add_argument("--config", help="run config YAML (only its learner section is used)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a learner field, e.g. --set learner.entropy_control.type=repo_r (repeatable)",
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--iterations", type=int, default=60)
    p.add_argument("--start", default="peaked", help="peaked (H0 ~ 0.8 nats) or flat (H0 ~ 1.7)")
    sub.add_parser("config", help="print the configuration reference (every field, default, description)")
    sub.add_parser(
        "appworld-setup",
        help="build the AppWorld virtualenv and (without APPWORLD_ROOT) the stand-in world",
        add_help=False,
    )
    return parser


def _cmd_eval(args) -> dict:
    """Held-out evaluation of a checkpoint (or the configured model): policy, engine and eval runner
    from training/builders.py, no learner and no optimizer; the same numbers a run's eval.jsonl gets."""
    from .builders import build_engine, build_policy, build_runner
    from .checkpoint import resolve_checkpoint
    from .evaluate import eval_line, evaluate_suite
    from .preflight import preflight

    cfg = load_run_config(args.task, args.config, args.overrides)
    preflight(cfg, new_run=False)
    iteration = 0
    if args.checkpoint:
        ckpt = resolve_checkpoint(args.checkpoint)
        path = str(ckpt / "model")
        iteration = int(json.loads((ckpt / "state.json").read_text())["iteration"])  # updates behind these weights
    else:
        from .policy import resolve_model_path

        path = resolve_model_path(cfg)
    _, tokenizer, rollout_model = build_policy(cfg, path)
    runner, num_tasks = build_runner(cfg, "eval", build_engine(cfg, rollout_model, tokenizer), tokenizer)
    try:
        result = evaluate_suite(runner, num_tasks, cfg)
    finally:
        runner.close()
    log.info(eval_line(iteration, result, cfg.task.eval_samples))
    return {"model": path, "iteration": iteration, **result}


def run(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if argv[:1] == ["appworld-setup"]:
        from eprl.envs.appworld.setup import main as appworld_setup

        return appworld_setup(argv[1:])
    args = _build_parser().parse_args(argv)
    if args.command == "envs":
        from eprl import envs

        print("\n".join(envs.list_envs()))
        return 0
    if args.command == "config":
        for name, default, desc in describe():
            print(f"{name:45s} {default:28s} {desc}")
        return 0
    if args.command == "entropy-check":
        from .tabular_testbed import entropy_check

        cfg = load_run_config(DEFAULT_TASK, args.config, args.overrides)
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        print(
            json.dumps(entropy_check(cfg.learner, seeds=seeds, iterations=args.iterations, start=args.start), indent=2)
        )
        return 0
    if args.command == "plot":
        from .plot import plot_runs

        for run_dir in args.runs:
            if not any((Path(run_dir) / name).is_file() for name in ("metrics.jsonl", "eval.jsonl")):
                raise ConfigError(f"plot: {run_dir} is not a run directory (no metrics.jsonl or eval.jsonl)")
        if args.out is None and len(args.runs) > 1:
            raise ConfigError("plot: several runs are overlaid into one set of PNGs; say where with --out DIR")
        for path in plot_runs(args.runs, args.out or Path(args.runs[0]) / "plots"):
            print(path)
        return 0
    from . import distributed, loop

    if args.command == "eval":
        print(json.dumps(_cmd_eval(args), indent=2))
        return 0
    resuming = args.command == "train" and args.resume
    if resuming:
        given = [
            flag
            for flag, value in (("--task", args.task), ("--config", args.config), ("--set", args.overrides))
            if value
        ]
        if given:
            raise ConfigError(
                f"train --resume takes the run's own config.json; {', '.join(given)} would be ignored: "
                "drop it (only --iterations N may change, to extend the run), or use `eprl continue "
                f"{args.resume} --task ...` for a new run from its weights with other settings"
            )
    elif args.command == "train":
        args.task = args.task or str(DEFAULT_TASK)
        if args.iterations is not None:
            raise ConfigError("--iterations goes with --resume; for a new run use --set run.iterations=N")
        if args.trust_checkpoint:
            raise ConfigError("--trust-checkpoint goes with --resume (or `continue`): a new run loads no trainer.pt")
    if args.command == "continue" and not args.task:
        raise ConfigError("continue: --task is required (the new domain's task suite)")
    cfg = loop.saved_config(args.resume) if resuming else load_run_config(args.task, args.config, args.overrides)
    distributed.init_distributed(cfg.run.device)  # under torchrun: one process per rank (no-op otherwise)
    main = distributed.is_main()
    try:
        if resuming:
            summary = loop.resume(args.resume, iterations=args.iterations, trust_checkpoint=args.trust_checkpoint)
        elif args.command == "train":
            summary = loop.train(cfg)
        else:
            summary = loop.continue_from(args.checkpoint, cfg, trust_checkpoint=args.trust_checkpoint)
    finally:
        distributed.close_distributed()
    if main:  # the other ranks' summary is empty
        print(json.dumps(summary, indent=2))
    return 0


def passive_openmp_default() -> None:
    """OpenMP (libgomp, torch's CPU backend) threads spin at every barrier by default. Next to other CPU-bound
    processes a spinning thread burns the time slice its partner needs: the default job's iteration went from
    ~5 s to ~48 s with two competitors (issue #14; bench/results/threads_contention.md). Passive waiting must be
    chosen before libgomp loads, i.e. before torch is imported (nothing above imports it); the user's own
    setting wins. A bounded spin was tried as a middle ground and lost (SmolLM2-135M decode steps at batch 16,
    2 threads, ms per step): idle, PASSIVE 109-118 against 85-99 for GOMP_SPINCOUNT 3000/10000 and for the
    unset default; next to one busy process, PASSIVE 173, GOMP_SPINCOUNT=3000 247, 10000 374, unset 370."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> None:
    """The `eprl` console script and `python -m eprl.training`."""
    passive_openmp_default()
    try:
        code = run(argv)
    except (EprlError, FileNotFoundError, FileExistsError) as err:  # the user's to fix: one line, no traceback
        print(f"eprl: error: {err}", file=sys.stderr)
        code = 2
    sys.exit(code)
