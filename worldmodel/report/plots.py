"""PNG plots drawn from a run's files: training curves, an evaluation summary, a comparison.

`plot_training` draws metrics.csv (loss terms, held-out loss against the "predict no change"
baseline, collapse diagnostics), `plot_eval` an evaluation's results.json, `plot_compare` a
`wm compare` result. matplotlib runs on its Agg backend, so this works on headless machines.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from worldmodel.training.logger import read_metrics

CURVES = "curves.png"
EVAL_SUMMARY = "summary.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Atomic PNG write: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
    return path


def _series(rows: list[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows where `key` has a finite value."""
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if v not in (None, ""):
            y = float(v)
            if math.isfinite(y):
                xs.append(float(r["step"]))
                ys.append(y)
    return xs, ys


def plot_training(run_dir: str | os.PathLike, path: str | os.PathLike | None = None) -> Path | None:
    """Draw `run_dir/metrics.csv` into `path` (default `run_dir/curves.png`); None if nothing is logged."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(2, 2, figsize=(11, 7))
    title = "/".join(Path(run_dir).resolve().parts[-2:])

    a = ax[0, 0]
    for key, label in (("pred", "prediction (train)"), ("open_loop", "open-loop rollout (train)"),
                       ("sigreg", "SIGReg statistic"), ("loss", "total loss")):
        xs, ys = _series(rows, key)
        if xs:
            a.plot(xs, ys, label=label, lw=1)
    a.set_yscale("log")
    a.set_title("training loss")

    a = ax[0, 1]
    for key, label, style in (("val_pred", "held-out prediction", "-o"),
                              ("val_nochange", 'baseline: "predict no change"', "--"),
                              ("val_open_loop", "held-out open-loop rollout (n_preds chunks)", "-s")):
        xs, ys = _series(rows, key)
        if xs:
            a.plot(xs, ys, style, label=label, lw=1.2, ms=3)
    a.set_yscale("log")
    a.set_title("validation (lower than the baseline = the model predicts)")

    a = ax[1, 0]
    xs, ys = _series(rows, "eff_rank")
    if xs:
        a.plot(xs, ys, "-o", ms=3, color="C2", label="effective rank")
    a.set_ylabel("effective rank")
    b = a.twinx()
    for key, label, color in (("std_mean", "per-dim std (mean)", "C3"), ("std_min", "per-dim std (min)", "C4"),
                              ("probe_r2", "probe_r2 (pose read off latents)", "C5")):
        xs, ys = _series(rows, key)
        if xs:
            b.plot(xs, ys, "-", color=color, lw=1, label=label)
    a.set_ylim(bottom=0)                       # from 0: a collapse reads as a fall, noise as noise
    b.set_ylim(bottom=min(0.0, b.get_ylim()[0]))
    b.set_ylabel("std, probe_r2")
    a.set_title("collapse diagnostics (rank or std falling to ~0 = collapse)")
    handles = a.get_legend_handles_labels()[0] + b.get_legend_handles_labels()[0]
    if handles:
        a.legend(handles=handles, fontsize=7, loc="best")

    a = ax[1, 1]
    xs, ys = _series(rows, "lr")
    if xs:
        a.plot(xs, ys, color="C0", label="learning rate")
    a.set_ylabel("learning rate")
    b = a.twinx()
    xs, ys = _series(rows, "samples_per_s")
    if xs:
        b.plot(xs, ys, color="C1", lw=0.8, label="samples/s")
    b.set_ylabel("samples/s")
    a.set_title("schedule and speed")
    handles = a.get_legend_handles_labels()[0] + b.get_legend_handles_labels()[0]
    if handles:
        a.legend(handles=handles, fontsize=7, loc="best")

    for a in (ax[0, 0], ax[0, 1]):
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    for a in ax.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(f"{title}: {len(rows)} logged rows, last step {rows[-1]['step']}")
    fig.tight_layout()
    try:
        return _save(fig, Path(path) if path else Path(run_dir) / CURVES)
    finally:
        plt.close(fig)


def safe_draw(draw: Callable[..., Any], *args: Any, redraw: str = "redraw it later with `wm plot`") -> float:
    """Call a plot function; a picture that cannot be drawn only warns, it must never fail a training
    run or an evaluation whose results are already on disk. Returns the seconds it took."""
    t0 = time.perf_counter()
    try:
        draw(*args)
    except Exception as e:   # noqa: BLE001 -- a picture is not worth a lost run
        print(f"warning: {draw.__name__} failed ({type(e).__name__}: {e}); the run's files are intact, {redraw}")
    return time.perf_counter() - t0


def _success_bars(a, bars: list[dict[str, Any]], tags: list[str], colors: list[str], fontsize: int) -> None:
    """Success rates (dicts with success_rate and ci95) as bars with their Wilson intervals, a tag
    above each."""
    rates = [100 * b["success_rate"] for b in bars]
    err = [[max(0.0, v - 100 * b["ci95"][0]) for v, b in zip(rates, bars)],
           [max(0.0, 100 * b["ci95"][1] - v) for v, b in zip(rates, bars)]]
    a.bar(range(len(bars)), rates, yerr=err, color=colors, capsize=6)
    for i, (b, tag) in enumerate(zip(bars, tags)):
        a.text(i, 100 * b["ci95"][1] + 2, tag, ha="center", fontsize=fontsize)
    a.set_ylabel("success rate (%), 95% Wilson CI")


def plot_eval(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draw an evaluation summary (the dict `wm eval` writes to results.json) into `path`."""
    plt = _pyplot()
    eps = results["per_episode"]
    floor = results.get("random_floor")
    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 2, 1.3]})

    a = ax[0]
    bars = [results] + ([floor] if floor else [])
    _success_bars(a, bars, [f"{100 * b['success_rate']:.0f}%" for b in bars], ["C0", "C7"][:len(bars)], 9)
    a.set_xticks(range(len(bars)), [results["planner"], "random"][:len(bars)])
    a.set_ylim(0, 105)
    a.set_title(f"{results['successes']}/{results['episodes']} episodes")

    a = ax[1]
    order = sorted(range(len(eps)), key=lambda i: eps[i]["closest_error"])
    x = list(range(len(eps)))
    a.scatter(x, [eps[i]["start_error"] for i in order], marker="x", color="C7", s=14, label="start")
    if floor:
        a.scatter(x, [eps[i]["random_closest_error"] for i in order], marker=".", color="C1", s=22,
                  label="closest, random actions")
    a.scatter(x, [eps[i]["closest_error"] for i in order], marker="o", color="C0", s=16,
              label=f"closest, {results['planner']}")
    a.axhline(1.0, color="C2", lw=1.5, ls="--", label="success threshold")
    a.set_yscale("log")
    a.set_xlabel("episode (sorted by the planner's closest approach)")
    a.set_ylabel("goal error (x tolerance)")
    a.set_title("how close each episode came (below the line = success)")
    a.legend(fontsize=7, loc="upper left")

    a = ax[2]
    steps = [e["steps_to_success"] for e in eps if e["success"]]
    budget = results.get("protocol", {}).get("budget", max(steps, default=50))
    a.hist(steps, bins=range(0, budget + 5, 5), color="C0")
    a.set_xlim(0, budget)
    a.set_xlabel("env steps to success")
    a.set_ylabel("episodes")
    a.yaxis.get_major_locator().set_params(integer=True)        # counts of episodes: whole numbers
    lat = results.get("latency_ms", {}).get("p50")
    a.set_title("steps to success" + (f" (plan p50 {lat / 1e3:.2f} s)" if lat else ""))

    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle(f"{results['env']}: {results['planner']} from {Path(results['checkpoint']).name}"
                 f" ({results['episodes']} episodes)")
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_compare(cmp: dict[str, Any], path: str | os.PathLike) -> Path:
    """Draw a `wm compare` result (what compare.json holds) into `path`: success on the shared tasks
    with Wilson intervals and the paired p against the first run; every task's closest approach."""
    plt = _pyplot()
    rows, floor = cmp["runs"], cmp.get("random_floor")
    fig, ax = plt.subplots(1, 2, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 2]})

    a = ax[0]
    bars = rows + ([{"name": "random", **floor}] if floor else [])
    tags = [f"{r['successes']}/{cmp['tasks']}" + (f"\np = {r['vs_first']['p_value']:.2g}" if "vs_first" in r else "")
            for r in bars]
    _success_bars(a, bars, tags, [f"C{i}" for i in range(len(rows))] + (["C7"] if floor else []), 8)
    a.set_xticks(range(len(bars)), [r["name"] for r in bars], rotation=15, ha="right", fontsize=8)
    a.set_ylim(0, 115)
    a.set_title(f"{cmp['tasks']} shared tasks (p: paired test vs {rows[0]['name']})", fontsize=9)

    a = ax[1]
    first = rows[0]["closest_error"]
    order = sorted(range(len(first)), key=lambda i: (first[i] is None, first[i] or 0.0))
    for j, r in enumerate(rows):
        ys = [r["closest_error"][i] for i in order]
        xs = [x for x, y in enumerate(ys) if y is not None]
        a.scatter(xs, [y for y in ys if y is not None], s=16 if j == 0 else 12, color=f"C{j}",
                  marker="o" if j == 0 else "x", label=f"{r['name']} ({r['successes']} solved)")
    a.axhline(1.0, color="k", lw=1.5, ls="--", label="success threshold")
    a.set_yscale("log")
    a.set_xlabel(("task x run" if rows[0].get("runs", 1) > 1 else "task")
                 + f" (sorted by {rows[0]['name']}'s closest approach)")
    a.set_ylabel("closest goal error (x tolerance)")
    a.set_title("how close each run came on every task (below the line = success)", fontsize=9)
    a.legend(fontsize=7, loc="upper left")
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle(f"{cmp['env']}: {len(rows)} evaluations compared")
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)
