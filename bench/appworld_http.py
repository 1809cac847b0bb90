"""AppWorld over HTTP: per-step latency vs in-process calls, and episodes/min with 1, 2, 4 servers.

    python bench/appworld_http.py [--episodes 8] [--out bench/results]

Runs on the stand-in world (never AppWorld scores). "In-process" is measured inside the
AppWorld venv (AppWorld(...).execute directly, the same code), since the trainer may not
import appworld. An episode = reset + failing step + the reference solution + evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_io import machine, write_results  # noqa: E402

from eprl import envs  # noqa: E402
from eprl.envs.appworld.setup import missing_reason, venv_python, world_root  # noqa: E402

STEP = "x = sum(range(100))\nprint(apis.supervisor.show_profile()['first_name'], x)"
IN_PROCESS = """
import json, sys, time
CLOCK = (time.perf_counter,)  # in a tuple: freezegun replaces time functions it finds in module globals
from appworld import AppWorld
world = AppWorld(task_id=sys.argv[1], experiment_name="bench-inprocess", timeout_seconds=10)
code = sys.argv[2]
world.execute(code)
times = []
for _ in range(int(sys.argv[3])):
    t0 = CLOCK[0](); world.execute(code); times.append(CLOCK[0]() - t0)
world.close()
print(json.dumps(times))
"""


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def http_step_latency(n: int) -> tuple[list[float], float]:
    env = envs.make("eprl/AppWorld-v0", split="train").unwrapped
    t0 = time.perf_counter()
    env.reset(options={"task_index": 0})
    first_reset = time.perf_counter() - t0
    env.step(STEP)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        env.step(STEP)
        times.append(time.perf_counter() - t0)
    env.close()
    return times, first_reset


def in_process_latency(n: int, task_id: str) -> list[float]:
    env = {**os.environ, "APPWORLD_ROOT": str(world_root())}
    out = subprocess.run(
        [str(venv_python()), "-c", IN_PROCESS, task_id, STEP, str(n)],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(world_root()),
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def episodes_per_minute(servers: int, episodes: int) -> dict:
    pool = [envs.make("eprl/AppWorld-v0", split="train").unwrapped for _ in range(servers)]
    root = world_root()

    def episode(env, k):
        obs, info = env.reset(options={"task_index": k % env.num_tasks})
        env.step("print(undefined_name)")
        code = (root / "data" / "tasks" / info["task_id"] / "ground_truth" / "solution_code.txt").read_text()
        return env.step(code)[4]["success"]

    def worker(i):
        return [episode(pool[i], k) for k in range(i, episodes, servers)]

    with ThreadPoolExecutor(servers) as ex:  # warm up: start servers (not timed)
        list(ex.map(lambda e: e.reset(options={"task_index": 0}), pool))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(servers) as ex:
        ok = [s for r in ex.map(worker, range(servers)) for s in r]
    wall = time.perf_counter() - t0
    for e in pool:
        e.close()
    return {
        "servers": servers,
        "episodes": len(ok),
        "solved": sum(ok),
        "wall_s": round(wall, 2),
        "episodes_per_min": round(60 * len(ok) / wall, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    reason = missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    http, first_reset = http_step_latency(args.steps)
    local = in_process_latency(args.steps, "a1c3e5f_1")
    mach = machine()
    result = {
        "world": "stand-in (not the official AppWorld data; not AppWorld scores)",
        "machine": {"cpu_count": mach["cores"], **mach},
        "step_latency_ms": {
            "http": {"median": round(1000 * statistics.median(http), 2), "p90": round(1000 * pct(http, 0.9), 2)},
            "in_process": {
                "median": round(1000 * statistics.median(local), 2),
                "p90": round(1000 * pct(local, 0.9), 2),
            },
            "steps": args.steps,
        },
        "first_reset_s (server start + initialize)": round(first_reset, 2),
        "throughput": [episodes_per_minute(s, args.episodes) for s in (1, 2, 4)],
    }
    lat = result["step_latency_ms"]
    md = [
        "# AppWorld over HTTP (stand-in world; not AppWorld scores)",
        "",
        f"Machine: {mach['cores']} CPUs, {mach['platform']}, Python {mach['python']}",
        "",
        "| step | median ms | p90 ms |",
        "|---|---|---|",
        f"| HTTP (env.step -> server) | {lat['http']['median']} | {lat['http']['p90']} |",
        f"| in-process (AppWorld.execute) | {lat['in_process']['median']} | {lat['in_process']['p90']} |",
        "",
        f"First reset (server start + initialize): {result['first_reset_s (server start + initialize)']} s",
        "",
        "| servers | episodes | solved | wall s | episodes/min |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {t['servers']} | {t['episodes']} | {t['solved']} | {t['wall_s']} | {t['episodes_per_min']} |"
        for t in result["throughput"]
    ]
    write_results(args.out / "appworld_http", result, "\n".join(md) + "\n", indent=2)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
