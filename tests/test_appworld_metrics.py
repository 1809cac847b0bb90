"""TGC/SGC per difficulty, and split loading, without the AppWorld venv."""

from __future__ import annotations

import json

import pytest

from eprl.envs.appworld.env import load_split
from eprl.envs.appworld.metrics import format_table, summarize


def test_tgc_sgc_per_difficulty():
    results = [
        {"task_id": "aaa_1", "success": True, "difficulty": 1},
        {"task_id": "aaa_2", "success": True, "difficulty": 1},
        {"task_id": "aaa_3", "success": False, "difficulty": 1},  # scenario aaa fails
        {"task_id": "bbb_1", "success": True, "difficulty": 1},
        {"task_id": "bbb_2", "success": True, "difficulty": 1},  # scenario bbb passes
        {"task_id": "ccc_1", "success": False, "difficulty": 3},
    ]
    s = summarize(results)
    assert s["aggregate"] == {
        "tgc": round(100 * 4 / 6, 1),
        "sgc": round(100 / 3, 1),
        "num_tasks": 6,
        "num_scenarios": 3,
    }
    assert s["difficulty_1"] == {"tgc": 80.0, "sgc": 50.0, "num_tasks": 5, "num_scenarios": 2}
    assert s["difficulty_3"] == {"tgc": 0.0, "sgc": 0.0, "num_tasks": 1, "num_scenarios": 1}
    assert "difficulty_2" not in s
    assert "stand-in" in format_table(s, title="stand-in world (not AppWorld scores)")


def test_samples_are_averaged_per_task():
    s = summarize(
        [{"task_id": "x_1", "success": True, "difficulty": 2}, {"task_id": "x_1", "success": False, "difficulty": 2}]
    )
    assert s["aggregate"]["tgc"] == 50.0 and s["aggregate"]["sgc"] == 50.0


def test_load_split_difficulty_and_denylist(tmp_path):
    (tmp_path / "data" / "datasets").mkdir(parents=True)
    (tmp_path / "data" / "datasets" / "dev.txt").write_text("aaa_1\naaa_2:tag\nbbb_1\n")
    for task_id, d in (("aaa_1", 1), ("aaa_2", 2), ("bbb_1", 1)):
        gt = tmp_path / "data" / "tasks" / task_id / "ground_truth"
        gt.mkdir(parents=True)
        (gt / "metadata.json").write_text(json.dumps({"difficulty": d}))
    assert load_split(tmp_path, "dev") == ["aaa_1", "aaa_2", "bbb_1"]
    assert load_split(tmp_path, "dev", difficulty=1) == ["aaa_1", "bbb_1"]
    assert load_split(tmp_path, "dev", denylist=["bbb_1"]) == ["aaa_1", "aaa_2"]
    with pytest.raises(FileNotFoundError, match="eprl appworld-setup"):
        load_split(tmp_path, "train")
