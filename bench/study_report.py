"""The study's report, generated from the committed run summaries only (bench/study.py writes them).

Figures: entropy per iteration by method (mean, band = min..max over seeds); held-out pass@1 over
iterations; final pass@k for k = 1..n; cumulative entropy vs final accuracy (one point per run, Pearson r
with a permutation p-value); domain B after A by method against B from the base model; clip fractions of
the precision pair. A claims table marks each claim reproduced / not reproduced / inconclusive by the
rules stated in it. Nothing in report.md is typed by hand.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from bench_io import atomic_write, save_figure

BAND = 0.10  # "within +-10% of H*"
WINDOW = 3  # iterations averaged at the start and the end of a run (one iteration's H is noisy)
MIN_SEEDS = 3  # fewer seeds than this: a claim is at best inconclusive


def load_runs(results_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results_dir / "runs").glob("*.json"))]


def series(run: dict, key: str) -> np.ndarray:
    return np.array([m.get(key, np.nan) if m.get(key) is not None else np.nan for m in run["metrics"]], dtype=float)


def target_entropy(run: dict) -> float:
    """H*: the controller's target when it logged one, else the mean entropy of the first WINDOW iterations."""
    targets = [m.get("target_entropy") for m in run["metrics"] if m.get("target_entropy") is not None]
    return float(targets[-1]) if targets else float(np.nanmean(series(run, "entropy")[:WINDOW]))


def entropy_change(run: dict) -> float:
    """Mean entropy of the last WINDOW iterations relative to H* (a fraction: -0.3 = fell 30%)."""
    h = series(run, "entropy")
    return float(np.nanmean(h[-WINDOW:]) / target_entropy(run) - 1.0)


def final_eval(run: dict, key: str = "eval_success") -> float:
    return float(run["eval"][-1][key]) if run["eval"] else float("nan")


def compute_minutes(run: dict) -> float:
    """Wall time the run spent in its iterations and evaluations, over every sitting (from its own rows)."""
    seconds = sum(m.get("time_iteration", 0.0) for m in run["metrics"]) + sum(
        e.get("eval_seconds", 0.0) for e in run["eval"]
    )
    return seconds / 60


def eval_auc(run: dict) -> float:
    """Mean held-out success over the run's evaluations after the start (how fast it learned)."""
    vals = [e["eval_success"] for e in run["eval"] if e["iteration"] > 0]
    return float(np.mean(vals)) if vals else float("nan")


def pearson_with_p(x: np.ndarray, y: np.ndarray, permutations: int = 20000, seed: int = 0) -> tuple[float, float]:
    """Pearson r and a one-sided permutation p-value for r > 0 (no scipy needed)."""
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan"), float("nan")
    r = float(np.corrcoef(x, y)[0, 1])
    rng = np.random.default_rng(seed)
    perms = np.array([np.corrcoef(x, rng.permutation(y))[0, 1] for _ in range(permutations)])
    return r, float((np.sum(perms >= r) + 1) / (permutations + 1))


def by_method(runs: list[dict], domain: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        if run["domain"] == domain:
            out[run["method"]].append(run)
    return dict(out)


# ----------------------------------------------------------------------------- claims
def _verdict(values: list[float], ok, bad) -> str:
    if not values:
        return "not run"
    if len(values) < MIN_SEEDS:
        return f"inconclusive ({len(values)} seed{'s' if len(values) > 1 else ''})"
    if all(ok(v) for v in values):
        return "reproduced"
    if all(bad(v) for v in values):
        return "not reproduced"
    return "inconclusive (seeds disagree)"


def _pct(values: list[float]) -> str:
    return ", ".join(f"{v:+.0%}" for v in values) if values else "-"


def parent_entropy_claim(runs: list[dict]) -> list[tuple[str, str, str, str]]:
    """Does the entropy a policy kept on A predict how fast it learns B? One point per continued B run:
    the parent's last-WINDOW mean entropy on A against the B run's eval_auc, whatever the method."""
    a = {r["id"]: r for r in runs if r["domain"] == "A"}
    pairs = [
        (float(np.nanmean(series(a[r["parent"]], "entropy")[-WINDOW:])), eval_auc(r))
        for r in runs
        if r["domain"] == "B" and r.get("parent") in a
    ]
    pairs = [(h, y) for h, y in pairs if np.isfinite(h) and np.isfinite(y)]
    if len(pairs) < 3:
        return []
    r, p = pearson_with_p(np.array([h for h, _ in pairs]), np.array([y for _, y in pairs]))
    verdict = (
        "reproduced" if r > 0 and p < 0.05 else ("not reproduced" if (r <= 0 and len(pairs) >= 8) else "inconclusive")
    )
    return [
        (
            "Higher entropy kept on A, faster learning on B",
            "Pearson r > 0 with one-sided permutation p < 0.05 between "
            f"the parent's last-{WINDOW} mean entropy on A and B's mean held-out success after the start, over "
            "continued B runs",
            f"r = {r:+.2f}, p = {p:.3f}, n = {len(pairs)} runs",
            verdict,
        )
    ]


def _clip_high(runs: list[dict]) -> str:
    """Mean fraction of tokens the upper clip bound held back (clip-higher only matters where this is > 0)."""
    return f"{float(np.mean([np.nanmean(series(r, 'clip_frac_high')) for r in runs])):.2%}" if runs else "-"


def _at_largest(runs: list[dict], key: str) -> str:
    """Iterations each run's controller (zeta, eps_high) spent at its largest value: there it had no more to give."""
    logged = [v for v in (series(r, key) for r in runs) if np.isfinite(v).any()]
    counts = [(int(np.sum(np.isclose(v, np.nanmax(v)))), len(v), np.nanmax(v)) for v in logged]
    where = ", ".join(f"{n}/{total} (at {top:g})" for n, total, top in counts)
    return f"; iterations with {key} at its largest value: {where}" if counts else ""


def claims(runs: list[dict]) -> list[tuple[str, str, str, str]]:
    """(claim, rule, numbers, verdict) rows."""
    a = by_method(runs, "A")
    change = {m: [entropy_change(r) for r in rs] for m, rs in a.items()}
    seeds = {m: [r["seed"] for r in rs] for m, rs in a.items()}
    rows = []
    g = change.get("grpo", [])
    rows.append(
        (
            "GRPO's entropy falls",
            f"every seed: last-{WINDOW} mean < H0 by more than {BAND:.0%}",
            f"grpo {_pct(g)} (seeds {seeds.get('grpo', [])})",
            _verdict(g, lambda v: v < -BAND, lambda v: v >= -BAND),
        )
    )
    for name, label in (
        ("repo_r", "REPO-R (paper's zeta bounds)"),
        ("repo_r_wide", "REPO-R (zeta_max 1)"),
        ("repo_d", "REPO-D"),
        ("adapo", "ADAPO"),
        ("adapo_offpolicy", "ADAPO (2 epochs x 4 minibatches)"),
        ("clip_cov", "Clip-Cov"),
        ("kl_cov", "KL-Cov"),
    ):
        v = change.get(name, [])
        if name in ("repo_r", "adapo") or v:
            rows.append(
                (
                    f"{label} holds entropy within +-{BAND:.0%} of H*",
                    f"every seed: abs(last-{WINDOW} mean / H* - 1) <= {BAND:.0%}",
                    f"{name} {_pct(v)} (seeds {seeds.get(name, [])})"
                    + (f"; upper clip binds on {_clip_high(a.get(name, []))} of tokens" if "adapo" in name else "")
                    + _at_largest(a.get(name, []), "eps_high" if "adapo" in name else "zeta"),
                    _verdict(v, lambda x: abs(x) <= BAND, lambda x: abs(x) > BAND),
                )
            )
    for name, label in (("dapo", "DAPO"), ("dapo_offpolicy", "DAPO (2 epochs x 4 minibatches)")):
        d = change.get(name, [])
        if name == "dapo" or d:
            rows.append(
                (
                    f"{label}'s entropy runs away (rises)",
                    f"every seed: last-{WINDOW} mean > H0 by more than {BAND:.0%}",
                    f"{name} {_pct(d)} (seeds {seeds.get(name, [])}); upper clip binds on {_clip_high(a.get(name, []))} "
                    "of tokens",
                    _verdict(d, lambda v: v > BAND, lambda v: v <= BAND),
                )
            )
    b = by_method(runs, "B")
    if b:
        auc = {m: float(np.mean([eval_auc(r) for r in rs])) for m, rs in b.items()}
        n = {m: len(rs) for m, rs in b.items()}
        preserved = [m for m in auc if m not in ("base", "grpo", "dapo", "gspo", "rloo")]
        nums = "; ".join(f"{m} {auc[m]:.3f} (n={n[m]})" for m in sorted(auc))
        if "grpo" in auc and preserved:
            wins = [auc[m] > auc["grpo"] for m in preserved]
            verdict = (
                "inconclusive (fewer than 3 seeds per arm)"
                if min(n.values()) < MIN_SEEDS
                else "reproduced"
                if all(wins)
                else "not reproduced"
                if not any(wins)
                else "inconclusive (methods disagree)"
            )
        else:
            verdict = "not run"
        rows.append(
            (
                "Entropy-preserved policies learn B faster than GRPO's",
                "mean held-out success over B's evaluations "
                "after the start, entropy-controlled continuations vs the GRPO continuation",
                nums,
                verdict,
            )
        )
        rows += parent_entropy_claim(runs)
    xs = [
        (r["metrics"][-1].get("cumulative_entropy"), final_eval(r)) for r in runs if r["domain"] == "A" and r["metrics"]
    ]
    xs = [(c, y) for c, y in xs if c is not None and np.isfinite(y)]
    if len(xs) >= 3:
        r, p = pearson_with_p(np.array([c for c, _ in xs]), np.array([y for _, y in xs]))
        verdict = (
            "reproduced" if r > 0 and p < 0.05 else ("not reproduced" if (r <= 0 and len(xs) >= 8) else "inconclusive")
        )
        rows.append(
            (
                "Cumulative entropy correlates with final accuracy",
                "Pearson r > 0 with one-sided permutation p < 0.05 over domain-A runs",
                f"r = {r:+.2f}, p = {p:.3f}, n = {len(xs)} runs",
                verdict,
            )
        )
    prec = {m: rs for m, rs in a.items() if m.endswith("_bf16")}
    for name, rs in sorted(prec.items()):
        paired = {r["seed"] for r in rs}  # the fp32 runs of the same seeds (the same data, the same start)
        base = [r for r in a.get(name[: -len("_bf16")], []) if r["seed"] in paired]
        clip = lambda runs_: (
            float(
                np.mean(
                    [
                        np.nanmean(series(r, "clip_frac_high") + series(r, "clip_frac_low"))  # noqa: E731
                        for r in runs_
                    ]
                )
            )
            if runs_
            else float("nan")
        )
        c16, c32 = clip(rs), clip(base)
        verdict = (
            "not run"
            if not base
            else "reproduced"
            if c16 > 2 * c32
            else "not reproduced"
            if c16 <= 1.2 * c32
            else "inconclusive"
        )
        rows.append(
            (
                f"bf16 ratios bias clipping ({name[:-5]})",
                "mean clipped-token fraction (upper + lower) with bf16-rounded log-probs > 2x the fp32 run's",
                f"bf16 {c16:.4f} vs fp32 {c32:.4f}",
                verdict,
            )
        )
    return rows


# ----------------------------------------------------------------------------- figures
def _plot_band(ax, groups: dict[str, list[dict]], key: str, getter) -> None:
    for method, rs in sorted(groups.items()):
        curves = [getter(r, key) for r in rs]
        n = min(len(c) for c in curves)
        if n == 0:
            continue
        stack = np.array([c[:n] for c in curves])
        x = np.arange(n)
        (line,) = ax.plot(x, np.nanmean(stack, 0), label=f"{method} (n={len(rs)})")
        if len(rs) > 1:
            ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color=line.get_color(), alpha=0.15)


def _eval_curve(run: dict, key: str) -> np.ndarray:
    return np.array([e.get(key, np.nan) for e in run["eval"]], dtype=float)


def figures(runs: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    a, b = by_method(runs, "A"), by_method(runs, "B")

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        save_figure(fig, path)
        plt.close(fig)
        paths.append(path)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _plot_band(ax, a, "entropy", lambda r, k: series(r, k))
    ax.set(
        xlabel="iteration",
        ylabel="mean action-token entropy (nats)",
        title="Domain A: entropy by method (band: min..max over seeds)",
    )
    ax.legend(fontsize=7, ncol=2)
    save(fig, "entropy.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _plot_band(ax, a, "eval_success", _eval_curve)
    ax.set(
        xlabel="evaluation index (every run.eval_every iterations)",
        ylabel="held-out pass@1",
        title="Domain A: held-out pass@1",
    )
    ax.legend(fontsize=7, ncol=2)
    save(fig, "pass1.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, rs in sorted(a.items()):
        ks = sorted({int(k.split("@")[1]) for r in rs for k in r["eval"][-1] if k.startswith("eval_pass@")})
        if ks:
            ax.plot(
                ks,
                [np.mean([r["eval"][-1].get(f"eval_pass@{k}", np.nan) for r in rs]) for k in ks],
                marker="o",
                label=method,
            )
    ax.set(xlabel="k", ylabel="pass@k (final evaluation)", title="Domain A: pass@k at the end")
    ax.legend(fontsize=7)
    save(fig, "pass_at_k.png")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method, rs in sorted(a.items()):
        pts = [(r["metrics"][-1].get("cumulative_entropy"), final_eval(r)) for r in rs if r["metrics"]]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=method)
    ax.set(xlabel="cumulative entropy (sum over iterations)", ylabel="final held-out pass@1", title="One point per run")
    ax.legend(fontsize=7)
    save(fig, "cumulative_entropy_vs_accuracy.png")

    if b:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        _plot_band(axes[0], b, "eval_success", _eval_curve)
        axes[0].set(
            xlabel="evaluation index", ylabel="held-out pass@1 on B", title="Domain B: after A (by method) vs from base"
        )
        _plot_band(axes[1], b, "entropy", lambda r, k: series(r, k))
        axes[1].set(xlabel="iteration", ylabel="entropy (nats)", title="Domain B: entropy")
        axes[0].legend(fontsize=7)
        save(fig, "domain_b.png")
    return paths


# ----------------------------------------------------------------------------- report
def write_report(spec: dict, results_dir: Path) -> list[Path]:
    runs = load_runs(results_dir)
    if not runs:
        raise SystemExit(f"no run summaries in {results_dir / 'runs'}: run `python bench/study.py run SPEC` first")
    paths = figures(runs, results_dir)
    lines = [
        f"# Study `{spec['name']}`: entropy control on a real pretrained LM",
        "",
        "Generated by `python bench/study.py report` from the run summaries in `runs/` (never edited by hand).",
        "",
    ]
    machines = sorted(
        {f"{r['machine']['cpu_model']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}" for r in runs}
    )
    codes = sorted({r["code"][:10] for r in runs})
    lines += [
        f"- Machines: {'; '.join(machines)}",
        f"- Code versions (git, each run's last sitting): {', '.join(codes)}",
        f"- Base overrides (every run): `{' '.join(spec['base_sets'])}`",
        f"- Domain A: `{spec['domain_a']['task']}` + `{' '.join(spec['domain_a'].get('sets', []))}`; "
        f"domain B: `{spec['domain_b']['task']}` + `{' '.join(spec['domain_b'].get('sets', []))}`",
        f"- Runs summarised: {len(runs)}; wall time in iterations and evaluations, all runs: "
        f"{sum(compute_minutes(r) for r in runs) / 60:.2f} h (runs went 2 at a time, one torch thread each, "
        "on a machine shared with other work)",
        "",
    ]
    lines += ["## Claims", "", "| claim | rule | numbers | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {rule} | {nums} | **{v}** |" for c, rule, nums, v in claims(runs)]
    lines += [
        "",
        "## Runs",
        "",
        "| run | method overrides | H* | entropy first -> last (change vs H*) | held-out pass@1 start -> end | "
        "cumulative entropy | iterations | wall (min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = set(spec["base_sets"]) | set(spec["domain_a"].get("sets", [])) | set(spec["domain_b"].get("sets", []))
    for r in sorted(runs, key=lambda r: r["id"]):
        own = [s for s in r["overrides"] if s not in base and not s.startswith("run.seed")]
        h = series(r, "entropy")
        ev = [e["eval_success"] for e in r["eval"]]
        lines.append(
            f"| {r['id']} | `{' '.join(own) or '-'}` | {target_entropy(r):.3f} | {h[0]:.3f} -> {h[-1]:.3f} "
            f"({entropy_change(r):+.0%}) | {ev[0]:.3f} -> {ev[-1]:.3f} | "
            f"{r['metrics'][-1].get('cumulative_entropy', float('nan')):.2f} | {len(r['metrics'])} | "
            f"{compute_minutes(r):.0f} |"
        )
    lines += ["", "## Figures", ""] + [f"![{p.stem}]({p.name})" for p in paths]
    report = results_dir / "report.md"
    atomic_write(report, "\n".join(lines) + "\n")
    return [report, *paths]
