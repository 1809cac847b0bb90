"""Report of bench/rollout_engines.py: the Markdown page (bench/results/rollout_engines.md) rendered from
the result JSON alone, so `python bench/rollout_report.py` can re-render it from a committed JSON.

    python bench/rollout_report.py [bench/results/rollout_engines.json]   (prints the Markdown)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from rollout_timing import IDLE_WINDOW_S, REPLAY_PASSES


def summary(res: dict) -> list[str]:
    out = ["## Summary", ""]
    for mod in res["models"].values():
        for ph in mod["phases"]:
            if "throughput" not in ph:
                continue
            t = ph["throughput"]
            name = next(k for k in t if k.startswith("vllm"))
            line = (
                f"- {mod['model']['kind']} model, {name}: {t[name]['median_tokens_per_s']:.0f} tok/s vs hf "
                f"{t['hf']['median_tokens_per_s']:.0f} tok/s = **{ph['ratio_vllm_over_hf']['median']:.1f}x**"
            )
            if "hf-1thread" in t:
                line += (
                    f" (vs hf with one thread {t['hf-1thread']['median_tokens_per_s']:.0f} tok/s: "
                    f"{ph['ratio_vllm_over_hf_1thread']['median']:.1f}x)"
                )
            out.append(line)
    goal = res["setup"]["goal_overhead"]
    for ph in res["models"].get("tiny", {}).get("phases", []):
        for eng, lp in ph.get("agent_loop", {}).items():
            ov = statistics.median(r["overhead"] for r in lp["reps"])
            out.append(
                f"- agent-loop overhead with {eng}: **{_pct(ov)}** ({'met' if ov < goal else 'not met'}; goal "
                f"< {_pct(goal)})"
            )
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
    lines = [
        "",
        f"### Where the loop's own time goes ({eng} loop; goal {'met' if met else 'not met'})",
        "",
        f"Median overhead {overhead_ms:.0f} ms per iteration. Parts, largest first (median ms per iteration; code "
        f"references as of commit {commit or 'unknown'}):",
        "",
    ]
    for k in sorted(ms, key=lambda k: -ms[k]):
        lines.append(f"- **{k}** {ms[k]:.1f} ms" + (f": {fixes[k]}" if k in fixes else ""))
    return lines


def thread_note(res: dict) -> list[str]:
    rows = []
    for mod in res["models"].values():
        for ph in mod["phases"]:
            t = ph.get("throughput", {})
            if "hf" in t and "hf-1thread" in t:
                rows.append(
                    f"{mod['model']['kind']}/{ph['vllm_variant']}: hf {t['hf']['median_tokens_per_s']:.0f} "
                    f"({t['hf']['min_tokens_per_s']:.0f}-{t['hf']['max_tokens_per_s']:.0f}) vs hf-1thread "
                    f"{t['hf-1thread']['median_tokens_per_s']:.0f} ({t['hf-1thread']['min_tokens_per_s']:.0f}-"
                    f"{t['hf-1thread']['max_tokens_per_s']:.0f}) tok/s"
                )
    if not rows:
        return []
    return [
        "",
        "## Threads",
        "",
        "hf with the default torch threads vs one thread, same rounds: " + "; ".join(rows) + ". "
        "With other jobs on the machine, two OpenMP threads on two cores wait for each other at every parallel "
        "region whenever one is descheduled, so the 2-thread hf engine is slow and erratic; vLLM's CPU worker "
        "runs one OpenMP thread bound to one core and reserves the other (see its log lines above). On a loaded "
        "machine `run.threads: 1` may be the faster setting; on an idle one, measure.",
    ]


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
    lines = [
        "# Rollout engines: `hf` vs `vllm` throughput, and the agent loop's overhead",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['affinity']} usable, {m['torch_threads']} torch threads), "
        f"{m['mem_total']} RAM; torch {m['torch']}, transformers {m['transformers']}, "
        f"{m['vllm_dist'] or 'vllm'} {m['vllm']}, Python {m['python']}; thread env {m['thread_env'] or 'none set'}. "
        f"{m['date']}, total {m['total_wall_s'] / 60:.1f} min.",
        "",
        f"Load average (1/5/15 min): {_load(m['loadavg_start'])} at the start, {_load(m['loadavg_end'])} at the end"
        + (
            f"; highest 1-min value seen {max(loads):.2f} on {m['affinity']} cores. **Other jobs were loading the "
            "machine: absolute numbers are noisy** (repeats of the two engines alternate, so ratios are less "
            "affected than absolute tokens/s)."
            if noisy
            else "."
        ),
        "",
        *summary(res),
        "## Models",
        "",
        "| model | params | non-embedding | vocab | hidden | layers | heads (kv) | MLP | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mod in res["models"].values():
        d = mod["model"]
        lines.append(
            f"| {d['kind']} | {d['params'] / 1e6:.2f}M | {d['non_embedding_params'] / 1e6:.2f}M | {d['vocab']} | "
            f"{d['hidden']} | {d['layers']} | {d['heads']} ({d['kv_heads']}) | {d['intermediate']} | {d['source']} |"
        )
    lines += [
        "",
        "## Raw engine throughput",
        "",
        f"{s['prompts']} prompts (first observations of train tasks 0..{s['prompts'] - 1}, chat-rendered), "
        f"{s['new_tokens']} new tokens each, temperature 1, no stop token; median of {s['reps']} (tiny) / "
        f"{s['big_reps']} (big) repeats after a "
        f"warm-up; `hf` and `vllm` repeats alternate. vllm: in-process LLM, {s['vllm']}. Ratio = median of the "
        "paired (same-round) vllm/hf ratios. `hf` is measured again beside each vllm variant (with that "
        "vllm engine alive but idle). `hf-1thread` = the same hf engine with torch.set_num_threads(1) (vLLM's "
        "CPU worker runs one OpenMP thread bound to one core here, see below). CPU s = user+system seconds of this process and its children (vLLM's engine core and "
        "worker) during the run.",
        "",
        "| model | vllm variant | engine | median tok/s | min-max tok/s | CPU s per run | wall s per run | vllm/hf | vllm/hf-1thread | vllm start s | idle vllm CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mod in res["models"].values():
        for ph in mod["phases"]:
            if "error" in ph:
                lines.append(
                    f"| {mod['model']['kind']} | {ph['vllm_variant']} | vllm | failed: {ph['error'][:120]} | | | | | | | |"
                )
                continue
            for eng, t in ph["throughput"].items():
                runs, is_vllm = t["runs"], eng.startswith("vllm")
                ratio = f"**{ph['ratio_vllm_over_hf']['median']:.1f}x**" if is_vllm else ""
                ratio1 = (
                    f"{ph['ratio_vllm_over_hf_1thread']['median']:.1f}x"
                    if is_vllm and "ratio_vllm_over_hf_1thread" in ph
                    else ""
                )
                start = f"{ph['vllm_start_s']:.0f}" if is_vllm else ""
                idle = f"{ph['vllm_idle_cpu_cores']:.2f}" if is_vllm else ""
                lines.append(
                    f"| {mod['model']['kind']} | {ph['vllm_variant']} | {eng} | {t['median_tokens_per_s']:.0f} | "
                    f"{t['min_tokens_per_s']:.0f}-{t['max_tokens_per_s']:.0f} | "
                    f"{statistics.median(r['cpu_s'] for r in runs):.1f} | "
                    f"{statistics.median(r['wall_s'] for r in runs):.2f} | {ratio} | {ratio1} | {start} | {idle} |"
                )
    vlog = sorted({line for mod in res["models"].values() for line in mod.get("vllm_log", [])})
    if vlog:
        lines += [
            "",
            "vLLM's own report of its CPU setup (from its log): " + "; ".join(f"`{line}`" for line in vlog) + ". "
            "'idle vllm CPU' = CPU cores the vLLM processes used while idle (measured over "
            f"{IDLE_WINDOW_S:.0f} s after the warm-up), taken from the colocated hf engine and the learner.",
        ]
    tiny = res["models"].get("tiny", {})
    loops = [(eng, lp) for ph in tiny.get("phases", []) for eng, lp in ph.get("agent_loop", {}).items()]
    if loops:
        lines += [
            "",
            "## Agent-loop overhead (tiny model, default suite)",
            "",
            f"agents.rollout.RolloutRunner, one training iteration of tasks/default.yaml per repeat "
            f"(tasks_per_iteration x group_size episodes, up to agent.max_turns turns, sampling of the suite); "
            f"median of {s['loop_reps']} repeats after a warm-up iteration; seconds are per iteration, the median "
            "of each column separately. overhead = (runner wall - time inside engine.generate) / runner wall. "
            f"Goal: under {_pct(s['goal_overhead'])}.",
            "",
            "| engine | wall s | engine s | env reset s | env step s (math-verify s, calls) | render s | prefix-check decode s | encode s | action decode s | agent other s | runner other s | overhead (each repeat) | goal | turns/ep | loop tok/s | replay s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for eng, lp in loops:
            reps = lp["reps"]

            def med(key, reps=reps):
                return statistics.median(r["parts_s"][key] for r in reps)

            ov = statistics.median(r["overhead"] for r in reps)
            lines.append(
                f"| {eng} | {statistics.median(r['wall_s'] for r in reps):.3f} | {med('engine'):.3f} | "
                f"{med('env_reset'):.4f} | {med('env_step'):.4f} "
                f"({statistics.median(r['math_verify_s'] for r in reps):.4f}, "
                f"{statistics.median(r['math_verify_calls'] for r in reps):.0f}) | {med('render'):.4f} | "
                f"{med('prefix_check_decode'):.4f} | {med('encode'):.4f} | {med('action_decode'):.4f} | "
                f"{med('agent_python'):.4f} | {med('runner_other'):.4f} | **{_pct(ov)}** "
                f"({', '.join(_pct(r['overhead']) for r in reps)}) | {'met' if ov < s['goal_overhead'] else 'not met'} | "
                f"{statistics.median(r['turns_per_episode'] for r in reps):.2f} | "
                f"{statistics.median(r['loop_tokens_per_s'] for r in reps):.0f} | "
                f"{lp['replay']['median_s']:.4f}{'' if lp['replay']['identical_episodes'] else ' (diverged!)'} |"
            )
        ep = loops[0][1]["reps"][0]
        lines += [
            "",
            f"{ep['episodes']} episodes per iteration; one engine call per turn with every unfinished "
            "episode batched. 'render' = chat template (start + record_observation), 'prefix-check decode' = "
            "decode of the whole token history in record_observation, 'encode' = tokenizing the first prompt "
            "and each template delta, 'action decode' = generated tokens -> env action; 'agent other' = the rest "
            "of the agent's methods; 'runner other' = the runner's own bookkeeping (wall minus everything "
            "else); 'math-verify' = envs/math/verify.py `_verify` (sympy), the checker's slow path for answers "
            "that are not plain numbers, part of 'env step'. 'replay' = the last repeat re-run (median of "
            f"{REPLAY_PASSES} passes, after a warm-up pass) by an engine that returns the recorded generations "
            "instantly (identical episodes, checked): the loop's cost with no engine and no timing proxies.",
        ]
        lines += [
            "",
            "Overhead in absolute terms (median per iteration): "
            + "; ".join(
                f"{eng}: {1000 * statistics.median(r['wall_s'] - r['parts_s']['engine'] for r in lp['reps']):.0f} ms "
                f"= {1e6 * statistics.median((r['wall_s'] - r['parts_s']['engine']) / (r['episodes'] * r['turns_per_episode']) for r in lp['reps']):.0f} us per episode-turn "
                f"(engine {1000 * statistics.median(r['parts_s']['engine'] / r['engine_calls'] for r in lp['reps']):.0f} ms per call)"
                for eng, lp in loops
            )
            + ". The overhead is a fixed cost per episode-turn; its share "
            "shrinks as the engine gets slower per token (bigger models).",
        ]
        slow = max(loops, key=lambda e: statistics.median(r["overhead"] for r in e[1]["reps"]))
        if slow[1].get("math_verify_slowest"):
            lines += [
                "",
                f"Slowest math-verify calls ({slow[0]} loop): "
                + ", ".join(f"{1000 * c['s']:.1f} ms for {c['answer']!r}" for c in slow[1]["math_verify_slowest"])
                + ".",
            ]
        sg = slow[1].get("profile")
        if sg:
            lines += [
                "",
                f"### Profile of the loop without engine ({slow[0]} loop, the highest overhead; cProfile of "
                f"{sg['passes']} replay passes, per pass)",
                "",
                "Project and math-verify functions by cumulative time (cProfile inflates Python-heavy code; "
                "compare shares, not absolute times):",
                "",
                "| function | calls | own ms | cumulative ms |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| `{r['function']}` | {r['calls']:.0f} | {1000 * r['tottime_s']:.2f} | {1000 * r['cumtime_s']:.2f} |"
                for r in sg["top_cumtime_project"]
            ]
            lines += [
                "",
                "Top functions by own time:",
                "",
                "| function | calls | own ms | cumulative ms |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| `{r['function']}` | {r['calls']:.0f} | {1000 * r['tottime_s']:.2f} | {1000 * r['cumtime_s']:.2f} |"
                for r in sg["top_tottime"][:12]
            ]
        lines += hotspots(slow[0], slow[1], s["goal_overhead"], m.get("commit"))
    lines += thread_note(res)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    res_file = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "results" / "rollout_engines.json"
    )
    sys.stdout.write(markdown(json.loads(res_file.read_text())))
