"""AppWorld's two metrics, per difficulty (as appworld.evaluator.Metric reports them).

TGC (task goal completion): % of tasks whose tests all pass.
SGC (scenario goal completion): % of scenarios (task id ``<scenario>_<n>``) whose tasks all pass.
With several samples per task, a task's success is the mean over its samples, and a
scenario's is the min over its tasks (AppWorld's "min of strict scores").
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping


def scenario_id(task_id: str) -> str:
    return task_id.split(":")[0].split("_")[0]


def _tgc_sgc(task_success: Mapping[str, float]) -> dict:
    by_scenario: dict[str, list[float]] = defaultdict(list)
    for task_id, s in task_success.items():
        by_scenario[scenario_id(task_id)].append(s)
    n = len(task_success)
    return {
        "tgc": round(100 * sum(task_success.values()) / n, 1) if n else None,
        "sgc": round(100 * sum(min(v) for v in by_scenario.values()) / len(by_scenario), 1) if n else None,
        "num_tasks": n,
        "num_scenarios": len(by_scenario),
    }


def summarize(results: Iterable[Mapping]) -> dict:
    """results: dicts with task_id, success (bool) and difficulty (int or None), one per episode.

    Returns {"aggregate": {...}, "difficulty_1": {...}, ...} with tgc, sgc (percent), num_tasks, num_scenarios.
    """
    samples: dict[str, list[float]] = defaultdict(list)
    difficulty: dict[str, int | None] = {}
    for r in results:
        samples[r["task_id"]].append(float(bool(r["success"])))
        difficulty[r["task_id"]] = r.get("difficulty")
    task_success = {t: sum(v) / len(v) for t, v in samples.items()}
    out = {"aggregate": _tgc_sgc(task_success)}
    for d in sorted({d for d in difficulty.values() if d is not None}):
        out[f"difficulty_{d}"] = _tgc_sgc({t: s for t, s in task_success.items() if difficulty[t] == d})
    return out


def format_table(summary: Mapping, title: str = "AppWorld") -> str:
    """A small text table; say in `title` when the world is the stand-in (never AppWorld scores)."""
    lines = [title, f"{'type':<14}{'TGC':>7}{'SGC':>7}{'tasks':>7}{'scen.':>7}"]
    for name, m in summary.items():
        lines.append(f"{name:<14}{m['tgc']:>7}{m['sgc']:>7}{m['num_tasks']:>7}{m['num_scenarios']:>7}")
    return "\n".join(lines)
