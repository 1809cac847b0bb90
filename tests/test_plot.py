"""`eprl plot`: PNG curves from metrics files, several runs overlaid."""

from __future__ import annotations

import json

from eprl.training.cli import run


def _write(run_dir, rows, name="metrics.jsonl"):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_overlays_runs_and_skips_missing_panels(tmp_path, capsys):
    for k, run_name in enumerate(["grpo", "repo_r"]):
        _write(
            tmp_path / run_name,
            [
                {"iteration": i, "entropy": 0.5 - 0.1 * i * (1 - k), "reward_mean": 0.1 * i, "clip_frac_high": 0.01}
                for i in range(4)
            ],
        )
    _write(
        tmp_path / "grpo", [{"iteration": 0, "eval_success": 0.4}, {"iteration": 4, "eval_success": 0.6}], "eval.jsonl"
    )
    out = tmp_path / "plots"
    assert run(["plot", str(tmp_path / "grpo"), str(tmp_path / "repo_r"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(p.split("/")[-1] for p in printed) == [
        "clip_frac.png",
        "entropy.png",
        "eval_success.png",
        "reward.png",
    ]
    for name in printed:
        assert open(name, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "grpo" / "eval.jsonl").unlink()
    out2 = tmp_path / "plots2"
    run(["plot", str(tmp_path / "grpo"), "--out", str(out2)])
    assert not (out2 / "eval_success.png").exists()  # no eval rows -> no empty panel


def test_pass_at_k_for_every_k_and_its_plot(tmp_path, capsys):
    from types import SimpleNamespace

    from eprl.training.evaluate import summarize

    # task 0: 2 of 4 samples succeed, task 1: 0 of 4. pass@k (Chen et al.) = 1 - C(n-c, k) / C(n, k):
    # task 0: k=1 1/2, k=2 1 - 1/6 = 5/6, k=3 1 (n - c < k), k=4 1; task 1: 0
    trajs = [
        SimpleNamespace(group_id=g, success=s, reward=float(s))
        for g, outcomes in ((0, [1, 0, 1, 0]), (1, [0, 0, 0, 0]))
        for s in outcomes
    ]
    out = summarize(trajs)
    assert [out[f"eval_pass@{k}"] for k in (1, 2, 3, 4)] == [0.25, 5 / 12, 0.5, 0.5]
    assert "eval_pass@5" not in out
    _write(tmp_path / "run", [{"iteration": 0, **out}, {"iteration": 3, **out, "eval_pass@2": 0.45}], "eval.jsonl")
    assert run(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "plots")]) == 0
    printed = [p.split("/")[-1] for p in capsys.readouterr().out.split()]
    assert "pass_at_k.png" in printed and "eval_success.png" in printed
    assert open(tmp_path / "plots" / "pass_at_k.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
