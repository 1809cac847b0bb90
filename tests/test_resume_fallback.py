"""`--resume` on a damaged run: falls back to the newest intact checkpoint and still ends bit-identical
to the uninterrupted run; refuses (one line, exit 2, nothing changed) when no checkpoint is intact.
Also the run-directory commands: `eval` of a checkpoint reports its iteration, `plot` defaults to
RUN_DIR/plots. All in-process through the CLI's own entry point (`training.cli.main`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runs import SMALL
from safetensors.torch import load_file

from eprl.training.cli import main

REPO = Path(__file__).resolve().parent.parent


def cli(capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `eprl ARGS`, run in this process."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def _sets(*pairs: str) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, eprl_cache):
    """An uninterrupted 3-iteration run with a checkpoint after every iteration."""
    out = tmp_path_factory.mktemp("runs")
    args = [
        "train",
        "--task",
        str(REPO / "tasks" / "default.yaml"),
        *_sets(
            *SMALL,
            "learner.entropy_coef=0.01",
            "run.iterations=3",
            "run.checkpoint_every=1",
            f"model.cache_dir={eprl_cache}",
            f"run.out_dir={out}",
            "run.name=ref",
        ),
    ]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 0
    return out / "ref"


def _copy(reference: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # timings and the process's peak RSS (here: of the whole pytest process) are measurements of the machine
    return [
        {k: v for k, v in r.items() if not k.startswith("time") and not k.endswith("_per_s") and k != "rss_peak_mb"}
        for r in rows
    ]


def _weights(run: Path, name: str = "iter_000003") -> dict:
    return load_file(str(run / "checkpoints" / name / "model" / "model.safetensors"))


def _same_as_reference(run: Path, reference: Path) -> None:
    assert _rows(run) == _rows(reference)
    a, b = _weights(reference), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "checkpoints" / "latest").read_text() == "iter_000003"


def test_missing_newest_checkpoint_falls_back_and_cleans_partial_writes(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    shutil.rmtree(run / "checkpoints" / "iter_000003")  # the natural reaction to a corrupt checkpoint
    (run / "checkpoints" / ".iter_000003.tmp999" / "model").mkdir(parents=True)  # a killed write
    code, out, err = cli(capsys, "train", "--resume", str(run))
    assert code == 0, err[-2000:]
    assert "removed .iter_000003.tmp999: the partial write of a killed run" in out
    assert f"resumed {run} at iteration 2 from iter_000002" in out
    assert not (run / "checkpoints" / ".iter_000003.tmp999").exists()
    _same_as_reference(run, reference)


@pytest.mark.parametrize("damaged", ["trainer.pt", "model/model.safetensors"])
def test_truncated_newest_checkpoint_is_kept_aside_and_skipped(reference, tmp_path, capsys, damaged):
    run = _copy(reference, tmp_path)
    path = run / "checkpoints" / "iter_000003" / damaged
    path.write_bytes(path.read_bytes()[:1000])
    code, out, err = cli(capsys, "train", "--resume", str(run))
    assert code == 0, err[-2000:]
    assert f"skipping iter_000003 ({damaged} is truncated (1000 of " in out
    assert "kept as iter_000003.corrupt" in out and "at iteration 2 from iter_000002" in out
    assert (run / "checkpoints" / "iter_000003.corrupt" / damaged).stat().st_size == 1000
    _same_as_reference(run, reference)


def test_no_intact_checkpoint_refuses_and_changes_nothing(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    for n in (1, 2, 3):
        (run / "checkpoints" / f"iter_00000{n}" / "trainer.pt").write_bytes(b"PK")
    (run / "checkpoints" / ".iter_000004.tmp999").mkdir()  # even a partial write stays for whoever looks
    before = {str(p.relative_to(run)): p.is_file() and p.read_bytes() for p in run.rglob("*")}
    code, out, err = cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"eprl: error: --resume {run}: no intact checkpoint (iter_000003: trainer.pt is truncated (2 of "
    )
    assert "iter_000001: trainer.pt is truncated" in err and "nothing was changed" in err
    after = {str(p.relative_to(run)): p.is_file() and p.read_bytes() for p in run.rglob("*")}
    assert after == before
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("iter_000003")  # written once, since deleted by hand
    code, _, err = cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "checkpoints/latest names a missing directory" in err
    assert (run / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]


def test_resume_before_any_checkpoint_starts_over_in_place(reference, tmp_path, capsys):
    run = _copy(reference, tmp_path)
    shutil.rmtree(run / "checkpoints")  # as if killed during iteration 1, before the first write
    code, out, err = cli(capsys, "train", "--resume", str(run))
    assert code == 0, err[-2000:]
    assert "at iteration 0: no checkpoint was written yet" in out
    _same_as_reference(run, reference)
    assert [r["iteration"] for r in map(json.loads, (run / "eval.jsonl").read_text().splitlines())] == [0, 3]


@pytest.mark.parametrize("extra", [["--set", "learner.lr=1"], ["--task", "tasks/default.yaml"], ["--config", "x.yaml"]])
def test_resume_refuses_config_flags(tmp_path, capsys, extra):
    code, _, err = cli(capsys, "train", "--resume", str(tmp_path), *extra)
    assert code == 2
    assert err.strip().splitlines() == [
        f"eprl: error: train --resume takes the run's own config.json; {extra[0]} would be ignored: drop it (only "
        f"--iterations N may change, to extend the run), or use `eprl continue {tmp_path} --task ...` for a new run "
        "from its weights with other settings"
    ]


def test_eval_of_a_checkpoint_reports_its_iteration(reference, capsys):
    code, out, err = cli(
        capsys,
        "eval",
        str(reference / "checkpoints" / "iter_000002"),
        *_sets("task.eval.num_tasks=2", "task.eval_samples=1", "run.progress=false", "run.threads=1"),
    )
    assert code == 0, err[-2000:]
    assert "[eval] after 2 updates:" in out
    result = json.loads(out[out.index("{") :])
    assert result["iteration"] == 2 and result["model"].endswith("iter_000002/model")


def test_plot_defaults_to_the_runs_plots_dir(reference, tmp_path, capsys, monkeypatch):
    run = _copy(reference, tmp_path)
    shutil.rmtree(run / "plots", ignore_errors=True)
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "plot", str(run))
    assert code == 0
    assert sorted(Path(p).name for p in out.split()) == [
        "clip_frac.png",
        "entropy.png",
        "eval_success.png",
        "reward.png",
    ]
    assert all(Path(p).parent == run / "plots" for p in out.split())
    assert not (tmp_path / "plots").exists()
    code, _, err = cli(capsys, "plot", str(tmp_path / "nope"))
    assert (code, err.strip()) == (
        2,
        f"eprl: error: plot: {tmp_path / 'nope'} is not a run directory (no metrics.jsonl or eval.jsonl)",
    )
    code, _, err = cli(capsys, "plot", str(run), str(run))
    assert code == 2 and "say where with --out DIR" in err


def test_disk_full_during_a_run_stops_in_one_line_and_resumes(reference, tmp_path, capsys, monkeypatch):
    import errno

    run = _copy(reference, tmp_path)
    shutil.rmtree(run / "checkpoints" / "iter_000003")
    real_save = torch.save

    def full_disk(obj, path, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    code, _, err = cli(capsys, "train", "--resume", str(run))
    assert code == 2 and "Traceback" not in err  # (stderr also holds the model loader's progress bars)
    assert err.strip().splitlines()[-1:] == [
        f"eprl: error: writing checkpoint {run}/checkpoints/iter_000003 failed (no space left on device); the previous "
        f"checkpoint iter_000002 is intact: free disk space and run `eprl train --resume {run}`"
    ]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001", "iter_000002", "latest"]
    monkeypatch.setattr(torch, "save", real_save)
    code, out, err = cli(capsys, "train", "--resume", str(run))
    assert code == 0, err[-2000:]
    _same_as_reference(run, reference)
