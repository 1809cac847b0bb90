"""bench/rollout_report.py renders the committed rollout_engines.md from the committed JSON, byte for byte,
and bench/bench_io.machine keeps the keys the committed results carry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))
import bench_io  # noqa: E402
import rollout_report  # noqa: E402


def test_report_renders_committed_markdown_from_committed_json():
    res = json.loads((BENCH / "results" / "rollout_engines.json").read_text())
    assert rollout_report.markdown(res) == (BENCH / "results" / "rollout_engines.md").read_text()


def test_machine_keeps_the_committed_keys(tmp_path):
    committed = json.loads((BENCH / "results" / "rollout_engines.json").read_text())["models"]["tiny"]["machine"]
    got = bench_io.machine(
        "affinity", "mem_total", "transformers", "vllm", "vllm_dist", "torch_threads", "thread_env", cpu_key="cpu"
    )
    assert set(committed) <= set(got)
    lp = json.loads((BENCH / "results" / "logprob_memory.json").read_text())["machine"]
    assert set(lp) - {"loadavg_start", "loadavg_end"} <= set(
        bench_io.machine("mem_total", "torch_threads", cpu_key="cpu")
    )
    assert {"cpu_model", "cores", "torch", "python", "platform", "date"} <= set(bench_io.machine())

    bench_io.write_results(tmp_path / "r", {"a": 1}, "# r\n", indent=2)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert (tmp_path / "r.md").read_text() == "# r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]  # no temporary file left behind
