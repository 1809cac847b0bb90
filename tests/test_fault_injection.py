"""Fault injection, small: three runs killed with SIGKILL (at a random time, during a checkpoint write,
during an evaluation), each resumed and compared bit-exactly with an uninterrupted run.
The 20-run version is bench/fault_injection.py (results in bench/results/fault_injection.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "fault_injection.py"


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_exact(tmp_path, eprl_cache):
    spec = importlib.util.spec_from_file_location("fault_injection", BENCH)
    fi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fi)
    result = fi.run_kills(3, seed=1, cache=eprl_cache, out=tmp_path, progress=lambda _s: None)
    runs = result["runs"]
    assert [r["mode"] for r in runs] == ["time", "checkpoint", "eval"]
    assert all(r["killed"] for r in runs), [r["hit"] for r in runs]
    assert runs[1]["hit"].startswith("writing iter_")
    for r in runs:
        assert r["bit_exact"], (r["mode"], r["hit"], r["equal"], r["notes"])
        assert r["equal"].keys() == {"metrics", "eval", "weights", "optimizer"}
