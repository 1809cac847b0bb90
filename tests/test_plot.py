"""`eprl plot`: PNG curves from metrics files, several runs overlaid."""
from __future__ import annotations

import json

from training.cli import run


def _write(run_dir, rows, name="metrics.jsonl"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_overlays_runs_and_skips_missing_panels(tmp_path, capsys):
    for k, run_name in enumerate(["grpo", "repo_r"]):
        _write(tmp_path / run_name, [{"iteration": i, "entropy": 0.5 - 0.1 * i * (1 - k), "reward_mean": 0.1 * i,
                                      "clip_frac_high": 0.01} for i in range(4)])
    _write(tmp_path / "grpo", [{"iteration": 0, "eval_success": 0.4}, {"iteration": 4, "eval_success": 0.6}], "eval.jsonl")
    out = tmp_path / "plots"
    assert run(["plot", str(tmp_path / "grpo"), str(tmp_path / "repo_r"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.split("/")[-1] for p in printed) == ["clip_frac.png", "entropy.png", "eval_success.png", "reward.png"]
    for name in printed:
        assert open(name, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "grpo" / "eval.jsonl").unlink()
    out2 = tmp_path / "plots2"
    run(["plot", str(tmp_path / "grpo"), "--out", str(out2)])
    assert not (out2 / "eval_success.png").exists()  # no eval rows -> no empty panel
