"""bench/study.py: the plan (A before the B runs that continue them, priority order, resume states) and the
report's claim rules on hand-made run summaries."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import study  # noqa: E402
import study_report  # noqa: E402

SPEC = {
    "name": "t",
    "base_sets": ["model.lora=true"],
    "domain_a": {"task": "tasks/smollm2_add.yaml", "sets": ["run.iterations=4"]},
    "domain_b": {
        "task": "tasks/smollm2_mul.yaml",
        "sets": ["run.iterations=2"],
        "base_seeds": [0],
        "continue": ["grpo"],
    },
    "methods": {"grpo": {"seeds": [0, 1]}, "repo_r": {"sets": ["learner.entropy_control.type=repo_r"], "seeds": [0]}},
}


def _spec(tmp_path, **extra):
    return {**SPEC, "work_dir": str(tmp_path / "work"), "results_dir": str(tmp_path / "results"), **extra}


def test_plan_orders_seeds_first_and_b_after_its_parent(tmp_path):
    runs = study.plan(_spec(tmp_path))
    assert [r.id for r in runs] == ["A/grpo/s0", "A/repo_r/s0", "A/grpo/s1", "B/base/s0", "B/grpo/s0"]
    b = runs[-1]
    assert b.parent == "A/grpo/s0" and b.needs == ["A/grpo/s0"]
    assert b.sets == ["model.lora=true", "run.iterations=2", "run.seed=0"]
    assert runs[1].sets == ["model.lora=true", "run.iterations=4", "learner.entropy_control.type=repo_r", "run.seed=0"]
    ordered = study.plan(_spec(tmp_path, order=["B/base", "A/grpo/s1"]))
    assert [r.id for r in ordered][:2] == ["B/base/s0", "A/grpo/s1"]


def test_states_and_commands(tmp_path):
    spec = _spec(tmp_path)
    a, b = study.plan(spec)[0], study.plan(spec)[-1]
    assert study.state(spec, a) == "fresh" and study.command(spec, a)[3:5] == ["train", "--task"]
    rd = study.run_dir(spec, a)
    rd.mkdir(parents=True)
    assert study.state(spec, a) == "restart"  # killed before its first checkpoint
    (rd / "checkpoints").mkdir()
    (rd / "checkpoints" / "latest").write_text("iter_000002")
    assert study.state(spec, a) == "resumable" and study.command(spec, a)[3:] == ["train", "--resume", str(rd)]
    cmd = study.command(spec, b)
    assert cmd[3:5] == ["continue", str(rd)] and "run.name=B__grpo__s0" in cmd
    study.summary_path(spec, a).parent.mkdir(parents=True)
    study.summary_path(spec, a).write_text("{}")
    assert study.state(spec, a) == "done"


def _run(method, seed, entropies, evals, domain="A", cumulative=None):
    metrics = [
        {"iteration": i, "entropy": h, "target_entropy": entropies[0], "clip_frac_high": 0.0, "clip_frac_low": 0.0}
        for i, h in enumerate(entropies)
    ]
    metrics[-1]["cumulative_entropy"] = float(sum(entropies)) if cumulative is None else cumulative
    return {
        "id": f"{domain}/{method}/s{seed}",
        "domain": domain,
        "method": method,
        "seed": seed,
        "metrics": metrics,
        "eval": [{"iteration": 4 * i, "eval_success": e, "eval_pass@1": e} for i, e in enumerate(evals)],
        "overrides": [],
        "wall_seconds_last_sitting": 60.0,
        "code": "abc",
        "machine": {},
    }


def test_entropy_change_is_last_window_against_target():
    run = _run("grpo", 0, [2.0, 1.9, 1.8, 1.2, 1.1, 1.0], [0.2, 0.4])
    assert study_report.entropy_change(run) == pytest.approx(1.1 / 2.0 - 1)


def test_claims_verdicts():
    falling = [2.0, 1.9, 1.5, 1.2, 1.1, 1.0]  # -45%
    held = [2.0, 2.1, 1.9, 2.05, 1.95, 2.0]  # 0%
    runs = [_run("grpo", s, falling, [0.2, 0.5]) for s in range(3)]
    runs += [
        _run("repo_r", 0, held, [0.2, 0.4]),
        _run("repo_r", 1, held, [0.2, 0.4]),
        _run("repo_r", 2, falling, [0.2, 0.3]),
    ]
    runs += [_run("adapo", 0, held, [0.2, 0.3])]
    verdicts = {c: v for c, _, _, v in study_report.claims(runs)}
    assert verdicts["GRPO's entropy falls"] == "reproduced"
    assert verdicts["REPO-R (paper's zeta bounds) holds entropy within +-10% of H*"] == "inconclusive (seeds disagree)"
    assert verdicts["ADAPO holds entropy within +-10% of H*"] == "inconclusive (1 seed)"
    assert verdicts["DAPO's entropy runs away (rises)"] == "not run"
    runs += [_run("dapo_offpolicy", s, [1.0, 1.1, 1.2, 1.3, 1.4, 1.5], [0.2, 0.3]) for s in range(3)]
    rows = {c: (n, v) for c, _, n, v in study_report.claims(runs)}
    assert rows["DAPO (2 epochs x 4 minibatches)'s entropy runs away (rises)"][1] == "reproduced"
    assert (
        "upper clip binds on 0.00% of tokens" in rows["DAPO (2 epochs x 4 minibatches)'s entropy runs away (rises)"][0]
    )
    assert "ADAPO (2 epochs x 4 minibatches) holds entropy within +-10% of H*" not in rows  # not run: no row
    runs = [_run("repo_r", s, held, [0.2, 0.4]) for s in range(3)]
    assert {c: v for c, _, _, v in study_report.claims(runs)}[
        "REPO-R (paper's zeta bounds) holds entropy within +-10% of H*"
    ] == "reproduced"


def test_claim_says_how_long_the_controller_sat_at_its_largest_value():
    """A controller pinned at its bound had no more to give: the row says so, per seed."""
    runs = [_run("repo_r", s, [2.0, 1.5, 1.0, 0.8, 0.5], [0.2, 0.9]) for s in range(2)]
    for run, zetas in zip(runs, ([0.01, 0.02, 0.05, 0.05, 0.05], [0.01, 0.02, 0.04, 0.05, 0.02]), strict=True):
        for m, z in zip(run["metrics"], zetas, strict=True):
            m["zeta"] = z
    runs.append(_run("adapo", 0, [2.0, 1.0], [0.2, 0.9]))  # no eps_high logged: no note
    rows = {c: n for c, _, n, _ in study_report.claims(runs)}
    assert rows["REPO-R (paper's zeta bounds) holds entropy within +-10% of H*"].endswith(
        "iterations with zeta at its largest value: 3/5 (at 0.05), 1/5 (at 0.05)"
    )
    assert "largest value" not in rows["ADAPO holds entropy within +-10% of H*"]


def test_correlation_claim_and_pearson():
    x, y = np.arange(10.0), np.arange(10.0) * 0.1
    r, p = study_report.pearson_with_p(x, y, permutations=2000)
    assert r == pytest.approx(1.0) and p < 0.01
    runs = [_run("grpo", s, [2.0, 1.0], [0.1, 0.1 * s], cumulative=float(s)) for s in range(8)]
    row = next(r for r in study_report.claims(runs) if r[0].startswith("Cumulative entropy"))
    assert row[3] == "reproduced" and "r = +1.00" in row[2]
    runs = [_run("grpo", s, [2.0, 1.0], [0.1, 0.1 * (8 - s)], cumulative=float(s)) for s in range(8)]
    assert next(r for r in study_report.claims(runs) if r[0].startswith("Cumulative entropy"))[3] == "not reproduced"


def test_report_from_summaries(tmp_path):
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    for run in [
        _run("grpo", 0, [2.0, 1.5, 1.0], [0.2, 0.5]),
        _run("base", 0, [2.0, 1.9], [0.1, 0.2], domain="B"),
        _run("grpo", 0, [1.0, 0.9], [0.1, 0.15], domain="B"),
    ]:
        run["machine"] = {"cpu_model": "cpu", "cores": 2, "torch": "2.13.0"}
        (results / "runs" / f"{run['id'].replace('/', '__')}.json").write_text(json.dumps(run))
    paths = study_report.write_report(_spec(tmp_path), results)
    text = paths[0].read_text()
    assert "| GRPO's entropy falls |" in text and "inconclusive (1 seed)" in text
    assert "| A/grpo/s0 |" in text and "2.000 -> 1.000" in text
    assert all(p.is_file() for p in paths) and {p.name for p in paths} >= {"entropy.png", "domain_b.png"}


def test_parent_without_checkpoint_is_rebuilt_before_its_b_run(tmp_path):
    """Run directories do not travel: a committed A summary without its checkpoint is trained again first."""
    spec = _spec(tmp_path)
    runs = {r.id: r for r in study.plan(spec)}
    a, b = runs["A/grpo/s0"], runs["B/grpo/s0"]
    study.summary_path(spec, a).parent.mkdir(parents=True)
    study.summary_path(spec, a).write_text("{}")
    assert study.state(spec, a) == "done" and study.dir_state(spec, a) == "fresh"
    assert [r.id for r in study.with_parents(spec, [b])] == ["A/grpo/s0", "B/grpo/s0"]
    assert study.command(spec, a)[3:5] == ["train", "--task"]  # trained from the start, not resumed
    ckpt = study.run_dir(spec, a) / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "latest").write_text("iter_000004")
    assert [r.id for r in study.with_parents(spec, [b])] == ["B/grpo/s0"]


def test_parent_entropy_claim_pairs_each_b_run_with_its_own_parent():
    runs = []
    for s in range(8):  # parents that kept more entropy continue to faster B runs
        parent = _run("repo_r", s, [2.0, 0.2 * (s + 1)] * 3, [0.2, 0.5])
        child = _run("repo_r", s, [1.0, 0.5], [0.3, 0.1 * s, 0.1 * s], domain="B")
        child["parent"] = parent["id"]
        runs += [parent, child]
    row = next(r for r in study_report.claims(runs) if r[0].startswith("Higher entropy kept on A"))
    assert row[3] == "reproduced" and "r = +1.00" in row[2] and "n = 8 runs" in row[2]
    for child in runs[1::2]:
        child["eval"] = [
            {"iteration": 0, "eval_success": 0.3},
            {"iteration": 4, "eval_success": 0.9 - 0.1 * child["seed"]},
        ]
    assert (
        next(r for r in study_report.claims(runs) if r[0].startswith("Higher entropy kept on A"))[3] == "not reproduced"
    )
    assert not [
        r for r in study_report.claims(runs[:4]) if r[0].startswith("Higher entropy kept on A")
    ]  # 2 pairs: no row


def test_precision_claim_pairs_bf16_runs_with_fp32_runs_of_the_same_seeds():
    def clipped(method, seed, frac):
        run = _run(method, seed, [2.0, 1.0], [0.2, 0.5])
        for m in run["metrics"]:
            m["clip_frac_low"] = frac
        return run

    runs = [
        clipped("dapo", 0, 0.001),
        clipped("dapo", 1, 0.010),
        clipped("dapo", 2, 0.010),
        clipped("dapo_bf16", 0, 0.003),
    ]
    row = next(r for r in study_report.claims(runs) if r[0] == "bf16 ratios bias clipping (dapo)")
    assert row[2] == "bf16 0.0030 vs fp32 0.0010" and row[3] == "reproduced"  # against seed 0 only, not the mean 0.007
