"""bench/vs_trl.py's report: step times from the workers' step ends, per-side medians and speed-ups over TRL
across rounds, the issue's targets, and bench/results/vs_trl.md rendered from the JSON."""

from __future__ import annotations

import statistics

TARGETS = {"eprl": 1.5, "overlap": 2.0}  # issue #14's acceptance: speed-up over TRL (a variant named overlap*: 2x)


def step_times(ends: list[float], warmup: int = 1) -> list[float]:
    """Wall time of each step after the first `warmup` ones, from the times at which steps ended."""
    first = max(warmup, 1)
    return [b - a for a, b in zip(ends[first - 1 :], ends[first:])]


def aggregate(runs: list[dict]) -> dict[str, dict]:
    """Worker results (each {side, round, step_ends, ...}) -> per side: timed steps, medians, TRL / side.

    A side's median is over all its timed steps of all rounds; `round_medians` are per round. `speedup` is
    TRL's median over the side's (> 1: the side is faster); it is absent when no TRL run was timed."""
    sides: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (r["round"], r["side"])):
        s = sides.setdefault(
            run["side"],
            {
                "side": run["side"],
                "sets": run.get("sets", []),
                "steps": [],
                "round_medians": [],
                "first_step_s": [],
                "tokens_per_sample": [],
                "rounds": 0,
            },
        )
        times = step_times(run["step_ends"])
        s["rounds"] += 1
        s["steps"] += times
        if times:
            s["round_medians"].append(statistics.median(times))
        if run.get("step_ends") and run.get("start") is not None:
            s["first_step_s"].append(run["step_ends"][0] - run["start"])
        s["tokens_per_sample"] += [t for t in run.get("tokens_per_sample", []) if t is not None]
    for s in sides.values():
        s["median_s"] = statistics.median(s["steps"]) if s["steps"] else None
        s["tokens_per_sample_mean"] = statistics.fmean(s["tokens_per_sample"]) if s["tokens_per_sample"] else None
    trl = sides.get("trl", {}).get("median_s")
    for s in sides.values():
        s["speedup"] = trl / s["median_s"] if trl and s["median_s"] else None
    return sides


def target_of(side: str, sets: list[str] = ()) -> float | None:
    """The speed-up over TRL the issue asks of a side: 2x of the overlapped mode (a side with
    `run.overlap=true`, or a variant named overlap*), 1.5x of the default eprl side; None for others."""
    overlap = any(x.replace(" ", "").lower() == "run.overlap=true" for x in sets) or side.startswith("eprl:overlap")
    if overlap:
        return TARGETS["overlap"]
    return TARGETS["eprl"] if side == "eprl" else None


def render_model(entry: dict) -> list[str]:
    """One model's section of vs_trl.md from its JSON entry."""
    w, info = entry["workload"], entry["machine"]
    v = entry["versions"]
    lines = [
        f"## {entry['model_label']}",
        "",
        f"{w['prompts']} prompts x {w['samples']} samples, {w['new_tokens']} new tokens, T=1, one optimizer step "
        f"per batch, no KL, {'LoRA (r 16, q/k/v/o)' if w.get('lora') else 'all weights'}, fp32, "
        f"{w['threads']} torch thread(s) per process; {entry['params'] / 1e6:.1f}M parameters "
        f"({entry['params_trainable'] / 1e6:.2f}M trained), prompt {w['prompt_tokens'][0]}-{w['prompt_tokens'][1]} "
        f"tokens; {entry['rounds']} alternating round(s) of {entry['steps']} steps, the first step of each "
        "process left out.",
        "",
        f"Machine: {info['cpu_model']}, {info['cores']} cores; python {info['python']}; {info['date']}; load "
        f"average {entry['load'][0]:.2f} before, {entry['load'][1]:.2f} after. eprl: torch {v['eprl']['torch']}, "
        f"transformers {v['eprl']['transformers']}; TRL: trl {v['trl'].get('trl', '-')}, torch "
        f"{v['trl'].get('torch', '-')}, transformers {v['trl'].get('transformers', '-')}.",
        f"Command: `{entry['command']}`",
        "",
        "| side | settings | s / step, median | per-round medians | timed steps | TRL / side | target | "
        "tokens / sample | first step s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(entry["sides"].values(), key=lambda s: (s["side"] == "trl", s["side"] != "eprl", s["side"]))
    for s in order:
        med = f"{s['median_s']:.2f}" if s["median_s"] is not None else "-"
        per = ", ".join(f"{m:.2f}" for m in s["round_medians"]) or "-"
        sp = (
            f"**{s['speedup']:.2f}x**"
            if s["speedup"] is not None and s["side"] != "trl"
            else ("1" if s["side"] == "trl" else "-")
        )
        tgt = target_of(s["side"], s["sets"])
        mark = "" if tgt is None or s["speedup"] is None else (" met" if s["speedup"] >= tgt else " not met")
        tok = f"{s['tokens_per_sample_mean']:.1f}" if s["tokens_per_sample_mean"] is not None else "-"
        first = ", ".join(f"{x:.1f}" for x in s["first_step_s"]) or "-"
        sets = "; ".join(f"`{x}`" for x in s["sets"]) or ("TRL GRPOTrainer" if s["side"] == "trl" else "defaults")
        lines.append(
            f"| {s['side']} | {sets} | {med} | {per} | {len(s['steps'])} | {sp} | "
            f"{'-' if tgt is None else f'{tgt:g}x{mark}'} | {tok} | {first} |"
        )
    if entry.get("notes"):
        lines += [""] + [f"- {n}" for n in entry["notes"]]
    return lines + [""]


def render_markdown(result: dict) -> str:
    md = [
        "# eprl `train` vs TRL `GRPOTrainer` on the same work (issue #14)",
        "",
        "Each side in its own process, one at a time, alternating rounds; a step = the wall time between the "
        "ends of two consecutive steps (generation, reward, update, logging); medians over the timed steps of "
        "all rounds. `TRL / side` > 1: the side is faster than TRL. Acceptance (issue #14): eprl >= 1.5x TRL "
        "(synchronous), the overlapped mode >= 2x. `python bench/vs_trl.py --help` says how the work is made "
        "equal; the notes under each table name what could not be.",
        "",
    ]
    order = ["tiny", "tiny-lora", "smollm2-135m", "smollm2-135m-lora"]
    for key in sorted(result["models"], key=lambda k: (order.index(k) if k in order else len(order), k)):
        md += render_model(result["models"][key])
    return "\n".join(md)
