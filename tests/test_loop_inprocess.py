"""The training loop in process, from parts (training/builders.py): seconds, no subprocess."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from cli_runs import SMALL

from eprl.training import cli
from eprl.training.builders import build_engine, build_learner, build_policy, build_runners
from eprl.training.config import load_run_config
from eprl.training.learner import Learner
from eprl.training.loop import Trainer, continue_from, resume, saved_config, train
from eprl.training.metrics import read_metrics
from eprl.training.policy import resolve_model_path

REPO = Path(__file__).resolve().parent.parent
TASK = str(REPO / "tasks" / "default.yaml")


def test_trainer_from_parts_then_eval_without_an_optimizer(tmp_path, eprl_cache, monkeypatch, capsys):
    # the entropy bonus guarantees a gradient even when every group's rewards are equal
    sets = [*SMALL, f"model.cache_dir={eprl_cache}", "run.device=cpu", "learner.entropy_coef=0.01"]
    cfg = load_run_config(TASK, overrides=[*sets, "run.iterations=2", "run.checkpoint_every=2"])
    path = resolve_model_path(cfg)
    torch.manual_seed(cfg.run.seed)
    model, tokenizer, rollout_model = build_policy(cfg, path)
    assert rollout_model is model  # one process: the engine samples from the learner's own module
    engine = build_engine(cfg, rollout_model, tokenizer)
    train_runner, eval_runner, num_train, num_eval = build_runners(cfg, engine, tokenizer)
    assert num_eval == 3
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(
        cfg,
        run_dir,
        model=model,
        tokenizer=tokenizer,
        rollout_model=rollout_model,
        engine=engine,
        train_runner=train_runner,
        eval_runner=eval_runner,
        num_train_tasks=num_train,
        num_eval_tasks=num_eval,
        learner=build_learner(cfg, model),
        meta={"model": path},
    )
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = trainer.fit()

    rows = read_metrics(run_dir)
    assert [r["iteration"] for r in rows] == [0, 1]
    for row in rows:
        assert row["episodes"] == 6 and row["groups_trained"] == 3 and row["resample_rounds"] == 0
        assert all(math.isfinite(row[k]) for k in ("loss", "entropy", "grad_norm", "reward_mean"))
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in evals] == [0, 2]  # before and after training (eval_every=0)
    ckpt = run_dir / "checkpoints" / "iter_000002"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_000002"
    assert json.loads((ckpt / "state.json").read_text())["iteration"] == 2
    assert (ckpt / "model" / "model.safetensors").is_file()
    assert summary["iterations"] == 2 and summary["eval_success_final"] == evals[-1]["eval_success"]
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items()), "the weights did not change"

    # `eprl eval` of that checkpoint: the run's own final eval row, and no learner or optimizer is ever built
    def refuse(*_a, **_k):
        raise AssertionError("eprl eval built a learner or an optimizer")

    monkeypatch.setattr(Learner, "__init__", refuse)
    monkeypatch.setattr(torch.optim, "AdamW", refuse)
    capsys.readouterr()
    assert cli.run(["eval", str(run_dir), "--task", TASK, *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[eval] after 2 updates: success")
    result = json.loads(out[out.index("{") :])
    assert Path(result.pop("model")).resolve() == (ckpt / "model").resolve()
    timing = lambda row: {k: v for k, v in row.items() if not k.endswith("seconds")}  # noqa: E731
    assert timing(result) == timing(evals[-1])


def test_continue_and_resume_leave_the_callers_config_unchanged(tmp_path, eprl_cache, caplog):
    caplog.set_level(logging.INFO, logger="eprl")  # a library user's lines are logging records
    # REPO-R records H* after the first iteration: the child inherits it, which used to be written into the caller's cfg
    sets = [
        *SMALL,
        f"model.cache_dir={eprl_cache}",
        "run.device=cpu",
        f"run.out_dir={tmp_path}",
        "run.iterations=1",
        "run.checkpoint_every=1",
        "learner.entropy_control.type=repo_r",
    ]
    parent_cfg = load_run_config(TASK, overrides=[*sets, "run.name=parent"])
    parent = train(parent_cfg)
    child_cfg = load_run_config(TASK, overrides=[*sets, "run.name=child"])
    before = child_cfg.model_dump()
    child = continue_from(parent["run_dir"], child_cfg)
    assert child_cfg.model_dump() == before and child_cfg.learner.entropy_control.target_entropy is None
    meta = json.loads((Path(child["run_dir"]) / "meta.json").read_text())
    inherited = saved_config(child["run_dir"]).learner.entropy_control.target_entropy
    assert meta["target_entropy_source"] == "parent" and inherited == meta["parent_target_entropy"] > 0

    # resume --iterations extends the run and records the new length, so a later plain resume keeps it
    resumed = resume(parent["run_dir"], iterations=2)
    assert resumed["iterations"] == 2 and [r["iteration"] for r in read_metrics(parent["run_dir"])] == [0, 1]
    assert saved_config(parent["run_dir"]).run.iterations == 2
    assert resume(parent["run_dir"])["iterations"] == 2  # nothing left to do: the same final state, no new rows
    assert [r["iteration"] for r in read_metrics(parent["run_dir"])] == [0, 1]
    lines = [r.getMessage() for r in caplog.records if r.name == "eprl.training.loop"]
    assert f"resumed {parent['run_dir']} at iteration 1 from iter_000001" in lines
    assert sum(line.startswith("[iter   0] reward") for line in lines) == 2  # parent and child
