"""The bad-config corpus (tests/corpus/bad_configs/cases.yaml): every case prints one line naming the
problem and exits 2, before any model work. In-process through the CLI's own entry point; a few
through a real subprocess to prove the exit code and the absence of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import eprl.training.loop as training_loop
from eprl.training.cli import main

CORPUS = Path(__file__).resolve().parent / "corpus" / "bad_configs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
SUBPROCESS = ["type_group_size", "encoding_latin1", "data_malformed_json", "--resume", "env_kwarg_unknown", "tools: 5"]


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{corpus}", str(CORPUS)).replace("{tmp}", str(tmp))


def _case_id(case: dict) -> str:
    return " ".join(Path(a).name if "{" in a else a for a in case["args"])[:70]


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
    monkeypatch.setenv("EPRL_BAD_CORPUS", str(CORPUS))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "existing" / "run"  # for the case that must not overwrite a run
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"iteration": 0}\n')
    return tmp_path


def test_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 40
    used = {Path(_fill(a, Path("/x"))).name for c in CASES for a in c["args"]}
    files = {p.name for p in CORPUS.iterdir() if p.name != "cases.yaml"}
    # each dataset is reached through the suite that names it
    assert files - used - {p.name for p in CORPUS.glob("data_*.jsonl")} == set()


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_bad_config_gives_one_line_and_exit_2(case, scratch, capsys, monkeypatch):
    def no_model_work(*_a, **_k):
        raise AssertionError("the error was not caught before model work")

    monkeypatch.setattr(training_loop, "resolve_model_path", no_model_work)
    with pytest.raises(SystemExit) as exited:
        main([_fill(a, scratch) for a in case["args"]])
    out, err = capsys.readouterr()
    assert exited.value.code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eprl: error: "), err
    assert _fill(case["expect"], scratch) in lines[0]
    assert out == ""


@pytest.mark.parametrize("needle", SUBPROCESS)
def test_bad_config_exit_code_in_a_real_process(needle, scratch):
    case = next(c for c in CASES if any(needle in a for a in c["args"]))
    proc = subprocess.run(
        [sys.executable, "-m", "eprl.training", *[_fill(a, scratch) for a in case["args"]]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=scratch,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and _fill(case["expect"], scratch) in proc.stderr
    assert "Traceback" not in proc.stderr
