"""bench/vs_trl.py's pure parts (with vs_trl_report.py, vs_trl_workers.py): step times from step ends, medians
and speed-ups across rounds, the TRL-side reward against eprl's last-number rule, variant parsing, and the
markdown rendered from the JSON. No TRL needed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import vs_trl  # noqa: E402
import vs_trl_report  # noqa: E402
import vs_trl_workers  # noqa: E402


def test_step_times_leave_out_the_warmup_step():
    assert vs_trl_report.step_times([10.0, 13.0, 15.5, 19.5]) == [3.0, 2.5, 4.0]
    assert vs_trl_report.step_times([10.0, 13.0, 15.5, 19.5], warmup=2) == [2.5, 4.0]
    assert vs_trl_report.step_times([10.0]) == []
    assert vs_trl_report.step_times([]) == []


def _run(side, round_, ends, start=0.0, tokens=(48.0,), sets=()):
    return {
        "side": side,
        "round": round_,
        "step_ends": list(ends),
        "start": start,
        "tokens_per_sample": list(tokens),
        "sets": list(sets),
    }


def test_aggregate_medians_over_rounds_and_speedup():
    runs = [
        _run("eprl", 0, [5, 7, 9, 11], start=1),
        _run("trl", 0, [6, 9, 12, 15]),
        _run("eprl", 1, [5, 8, 11, 14]),
        _run("trl", 1, [6, 12, 18, 24], tokens=(47.0, 48.0)),
        _run("eprl:overlap", 0, [5, 6, 7, 8], sets=["run.overlap=true"]),
    ]
    sides = vs_trl_report.aggregate(runs)
    e, t, o = sides["eprl"], sides["trl"], sides["eprl:overlap"]
    assert e["steps"] == [2, 2, 2, 3, 3, 3] and e["median_s"] == 2.5 and e["round_medians"] == [2, 3]
    assert t["median_s"] == 4.5 and t["round_medians"] == [3, 6] and t["rounds"] == 2
    assert e["speedup"] == pytest.approx(4.5 / 2.5) and t["speedup"] == pytest.approx(1.0)
    assert o["median_s"] == 1 and o["speedup"] == pytest.approx(4.5) and o["sets"] == ["run.overlap=true"]
    assert e["first_step_s"] == [4, 5]
    assert t["tokens_per_sample_mean"] == pytest.approx((48 + 47 + 48) / 3)


def test_aggregate_without_trl_or_timed_steps():
    sides = vs_trl_report.aggregate([_run("eprl", 0, [3.0])])
    assert sides["eprl"]["median_s"] is None and sides["eprl"]["speedup"] is None
    sides = vs_trl_report.aggregate([_run("eprl", 0, [3.0, 4.0])])
    assert sides["eprl"]["median_s"] == 1.0 and sides["eprl"]["speedup"] is None


@pytest.mark.parametrize(
    "text,gold,reward",
    [
        ("8 + 5 = 13.", "13", 1.0),
        ("it is 12, no 13", "13", 1.0),
        ("13 or 1,024", "1024", 1.0),
        ("13.0", "13", 1.0),
        ("-3", "3", 0.0),
        ("no digits", "13", 0.0),
        ("14", "13", 0.0),
        ("", "13", 0.0),
    ],
)
def test_trl_reward_matches_eprls_last_number_rule(text, gold, reward):
    assert vs_trl_workers.last_number_reward(text, gold) == reward
    from eprl.envs.math.verify import check_math, extract_last_number

    answer = extract_last_number(text)
    assert float(answer is not None and check_math(f"\\boxed{{{answer}}}", gold)) == reward


def test_parse_variant():
    assert vs_trl.parse_variant("overlap:run.overlap=true") == ("overlap", ["run.overlap=true"])
    assert vs_trl.parse_variant("mb: learner.micro_batch_tokens=512 ; run.seed=1") == (
        "mb",
        ["learner.micro_batch_tokens=512", "run.seed=1"],
    )
    for bad in ("run.overlap=true", ":a=b", "x:novalue", "bad name:a=b"):
        with pytest.raises(ValueError):
            vs_trl.parse_variant(bad)


def _entry(model="tiny"):
    sides = vs_trl_report.aggregate(
        [
            _run("eprl", 0, [5, 7, 9]),
            _run("trl", 0, [6, 9, 12]),
            _run("eprl:overlap", 0, [5, 6, 7], sets=["run.overlap=true"]),
        ]
    )
    return {
        "model": model,
        "model_label": "Random Llama 15.7M",
        "params": 15_747_328,
        "params_trainable": 15_747_328,
        "workload": {
            "prompts": 8,
            "samples": 8,
            "new_tokens": 48,
            "threads": 1,
            "lora": False,
            "prompt_tokens": [44, 45],
        },
        "rounds": 1,
        "steps": 3,
        "load": [1.0, 1.5],
        "command": "python bench/vs_trl.py",
        "machine": {"cpu_model": "CPU X", "cores": 2, "python": "3.11", "date": "2026-01-01T00:00:00"},
        "versions": {
            "eprl": {"torch": "2.13.0", "transformers": "5.24.0"},
            "trl": {"trl": "1.16.0", "torch": "2.13.0", "transformers": "5.24.0"},
        },
        "sides": sides,
        "notes": ["a difference"],
    }


def test_markdown_from_json_round_trip():
    smol = _entry("smollm2-135m")
    smol["model_label"] = "SmolLM2-135M-Instruct"
    result = json.loads(json.dumps({"models": {"smollm2-135m": smol, "tiny": _entry()}}))
    md = vs_trl_report.render_markdown(result)
    assert md.index("## Random Llama 15.7M") < md.index("## SmolLM2-135M-Instruct")  # the order
    rows = [ln for ln in md.splitlines() if ln.startswith("| eprl") or ln.startswith("| trl")]
    assert [r.split("|")[1].strip() for r in rows[:3]] == ["eprl", "eprl:overlap", "trl"]  # eprl first, TRL last
    assert "| 2.00 |" in rows[0] and "**1.50x**" in rows[0] and "1.5x met" in rows[0]
    assert "**3.00x**" in rows[1] and "2x met" in rows[1] and "`run.overlap=true`" in rows[1]
    assert "| 3.00 |" in rows[2] and "TRL GRPOTrainer" in rows[2]
    assert "CPU X, 2 cores" in md and "trl 1.16.0" in md and "- a difference" in md
    assert "8 prompts x 8 samples, 48 new tokens" in md and "prompt 44-45 tokens" in md


def test_targets():
    assert vs_trl_report.target_of("eprl") == 1.5 and vs_trl_report.target_of("trl") is None
    assert vs_trl_report.target_of("eprl:overlap") == 2.0 and vs_trl_report.target_of("eprl:onepass") is None
    assert (
        vs_trl_report.target_of("eprl", ["run.overlap=true"])
        == 2.0
        == vs_trl_report.target_of("eprl:x", ["run.overlap = True"])
    )


def test_target_not_met_is_said():
    entry = _entry()
    entry["sides"] = vs_trl_report.aggregate([_run("eprl", 0, [5, 7, 9]), _run("trl", 0, [6, 8.5, 11])])
    md = vs_trl_report.render_markdown({"models": {"tiny": entry}})
    assert "1.5x not met" in md
