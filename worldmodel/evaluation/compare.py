"""`wm compare A B ...`: `wm eval` results of the same tasks side by side, with paired tests.

Tasks are matched by (held-out episode seed, start step); the exact McNemar test against the first
run counts the tasks one run solved and the other did not. Runs given the same name (a recipe's
training seeds) are pooled and paired seed by seed. Evaluations that posed different tasks (env,
env kwargs, goal offset, budget, held-out policy) are refused before anything is printed. A
benchmarks/reproduce.py record counts as its training seeds under one name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from worldmodel.evaluation.config import CompareConfig
from worldmodel.evaluation.stats import mcnemar, percentile, two_proportion, wilson

COMPARE_JSON, COMPARE_PNG = "compare.json", "compare.png"
# Protocol fields that change what a task is; a results.json lacking one (an older file) is not checked on it.
SAME_TASKS = ("tasks", "budget", "goal_offset", "policy", "policy_kwargs", "episode_len", "env_kwargs")


def load_results(path: str | os.PathLike, planner_seeds: bool = False,
                 seeds: list[int] | None = None) -> tuple[Path, list[dict[str, Any]]]:
    """A `wm eval` results.json (or the directory holding it), checked to hold per-episode outcomes,
    as a list of one; a benchmarks/reproduce.py record as one per training seed (`record_results`)."""
    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{path}: no results.json there; pass a `wm eval` out= directory "
                                "or a benchmarks/reproduce.py record")
    try:
        res = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f} is not JSON ({e}); pass a `wm eval` results.json or a reproduce.py record") from None
    if isinstance(res, dict) and res.get("bench") == "reproduce":
        return f, record_results(res, f.name, planner_seeds, seeds)
    try:
        eps = res["per_episode"]
        for e in eps:
            int(e["seed"]), int(e["start_step"]), bool(e["success"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{f} is not a `wm eval` results.json with per-episode outcomes ({type(e).__name__}: "
                         f"{e}); re-run `wm eval` to write one") from None
    return f, [res]


def record_results(rec: dict[str, Any], label: str, planner_seeds: bool = False,
                   seeds: list[int] | None = None) -> list[dict[str, Any]]:
    """A reproduce.py record's training seeds (all, or those in `seeds`; their planner-seed-0 evals, in
    seed order; with `planner_seeds` each seed's evals at planner seeds 0, 1, ... in turn) as `wm eval`
    results: per task its outcome and the random floor's (a training seed's floor, the same at every planner seed).
    Records name their tasks (`tasks`: held-out episode seed, start step); one written before they
    did is paired by task order, which `_check_same_tasks` accepts only where the random floors agree
    task for task (the floor's actions are drawn from the tasks alone, so other tasks would show;
    weak evidence where the floor solves almost nothing)."""
    tasks = rec.get("tasks")
    rows = sorted(rec["per_seed"], key=lambda r: r["seed"])
    if seeds is not None:
        held = [r["seed"] for r in rows]
        if missing := [s for s in seeds if s not in held]:
            raise ValueError(f"{label} holds training seeds {held}, not {missing}: pick seeds= among them")
        rows = [r for r in rows if r["seed"] in seeds]
    out = []
    for row in rows:
        if "outcomes" not in row:
            raise ValueError(f"{label}: seed {row['seed']} has no per-task outcomes (the record predates them); "
                             f"compare its eval directory instead ({row.get('results', 'its results.json')})")
        if planner_seeds and not row.get("planner_seeds"):
            raise ValueError(f"{label}: seed {row['seed']} holds no planner seed but 0; add them with "
                             "`reproduce.py ... --planner-seeds 3 --resume`, or drop planner_seeds=true")
        rnd = row.get("random_outcomes")
        evals = [(0, row["outcomes"], row.get("plan_latency_ms_p50"))]
        evals += [(e["planner_seed"], e["outcomes"], e.get("plan_latency_ms_p50"))
                  for e in (row.get("planner_seeds") or []) if planner_seeds]
        for k, won, lat in evals:
            keys = tasks or [[-1, i] for i in range(len(won))]            # -1: no real held-out seed
            if len(keys) != len(won):
                raise ValueError(f"{label}: seed {row['seed']} has {len(won)} outcomes for {len(keys)} tasks")
            out.append({"env": rec["env"], "protocol": rec.get("protocol"), "planner": row.get("planner"),
                        "checkpoint": f"{label} seed {row['seed']} planner seed {k}", "by_order": not tasks,
                        "latency_ms": {"p50": lat},
                        "per_episode": [{"index": i, "seed": t[0], "start_step": t[1], "success": c == "1",
                                         "random_success": None if rnd is None else rnd[i] == "1"}
                                        for i, (t, c) in enumerate(zip(keys, won))]})
    if not out:
        raise ValueError(f"{label}: a reproduce.py record without any finished seed")
    return out


def task_keys(per_episode: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """(held-out episode seed, start step, repeat) per episode, in the order given: the same task
    in any evaluation of the same protocol; `repeat` tells apart an episode drawn twice."""
    seen: dict[tuple[int, int], int] = {}
    keys = []
    for e in per_episode:
        k = (int(e["seed"]), int(e["start_step"]))
        seen[k] = seen.get(k, -1) + 1
        keys.append((*k, seen[k]))
    return keys


def default_names(paths: list[Path]) -> list[str]:
    """Each run's directory path without the parts every run shares at its start and end."""
    parts = [(p.parent if p.name == "results.json" else p.with_suffix("")).resolve().parts for p in paths]
    lo = 0
    while all(len(q) > lo + 1 for q in parts) and len({q[lo] for q in parts}) == 1:
        lo += 1
    hi = 0
    while all(len(q) - hi > lo for q in parts) and len({q[len(q) - 1 - hi] for q in parts}) == 1:
        hi += 1
    names = ["/".join(q[lo:len(q) - hi]) or q[-1] for q in parts]
    return names if len(set(names)) == len(names) else [f"{i}:{n}" for i, n in enumerate(names)]


def _check_same_tasks(results: list[dict[str, Any]], names: list[str]) -> None:
    base, bname = results[0], names[0]
    for res, name in zip(results[1:], names[1:]):
        diffs = [f"env {base['env']!r} vs {res['env']!r}"] if base.get("env") != res.get("env") else []
        bp, rp = base.get("protocol") or {}, res.get("protocol") or {}
        diffs += [f"{k} {bp[k]!r} vs {rp[k]!r}" for k in SAME_TASKS if k in bp and k in rp and bp[k] != rp[k]]
        if diffs:
            raise ValueError(f"{name} and {bname} posed different tasks ({'; '.join(diffs)}): compare "
                             "evaluations of one env with the same budget=, goal_offset= and held-out data")


def _keyed_by_order(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where a reproduce.py record names no tasks, every run is paired by task order instead: the runs
    each with the full random floor, the same task for task, re-keyed (-1, i) for task i."""
    floors = {"".join("1" if e.get("random_success") else "0" if e.get("random_success") is not None else "?"
                      for e in sorted(r["per_episode"], key=lambda e: e.get("index", 0))) for r in results}
    if len(floors) != 1 or "?" in next(iter(floors)):
        raise ValueError("a reproduce.py record without `tasks` (written before records held them) is paired by "
                         "task order, so every run compared with it needs the random floor and the same one task "
                         "for task (the same tasks); these differ or lack it. Rerun reproduce.py with --resume to "
                         "record the tasks, or compare the eval directories")
    return [{**r, "per_episode": [{**e, "seed": -1, "start_step": i} for i, e in
                                  enumerate(sorted(r["per_episode"], key=lambda e: e.get("index", 0)))]}
            for r in results]


def compare(results: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """The comparison as a dict (what compare.json holds): per name its success on the shared tasks
    with a Wilson interval and the exact McNemar test against the first name. Runs that share a name
    (training seeds of one recipe) are pooled, paired in order with the other names' runs: the test
    then counts the tasks one recipe solved and the other did not over every seed."""
    _check_same_tasks(results, names)
    by_order = any(r.get("by_order") for r in results)
    if by_order:
        results = _keyed_by_order(results)
    by_key = []
    for r in results:
        eps = sorted(r["per_episode"], key=lambda e: e.get("index", 0))
        by_key.append(dict(zip(task_keys(eps), eps)))
    shared = [k for k in by_key[0] if all(k in b for b in by_key[1:])]
    if not shared:
        raise ValueError(f"{', '.join(dict.fromkeys(names))} share no task (held-out episode seed and start step): "
                         "evaluate each with the same eval_seed= on checkpoints trained on the same dataset")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    if len({len(g) for g in groups.values()}) > 1:
        raise ValueError("names pool runs (one name per recipe, its training seeds in order), and every name "
                         f"needs as many runs: {', '.join(f'{n} {len(g)}' for n, g in groups.items())}")
    rows = []
    for name, members in groups.items():
        eps = [by_key[i][k] for i in members for k in shared]            # seed-major: paired across names
        won = [bool(e["success"]) for e in eps]
        closest = [e.get("closest_error") for e in eps]
        lat = [(results[i].get("latency_ms") or {}).get("p50") for i in members]
        row = {"name": name, "runs": len(members), "planner": results[members[0]].get("planner"),
               "checkpoints": [results[i].get("checkpoint") for i in members],
               "successes": sum(won), "episodes": len(won), "success_rate": sum(won) / len(won),
               "ci95": wilson(sum(won), len(won)),
               "per_run": [sum(won[j * len(shared):(j + 1) * len(shared)]) for j in range(len(members))],
               "closest_failures": percentile([c for c, w in zip(closest, won) if not w and c is not None], 50),
               "steps_to_success": percentile([e["steps_to_success"] for e, w in zip(eps, won)
                                                if w and e.get("steps_to_success") is not None], 50),
               "plan_ms_p50": percentile([x for x in lat if x is not None], 50),
               "diverged": sum(e.get("diverged_at") is not None for e in eps),
               "outcomes": "".join("1" if w else "0" for w in won), "closest_error": closest}
        if rows:
            only, first_only, p = mcnemar(won, [c == "1" for c in rows[0]["outcomes"]])
            row["vs_first"] = {"only_this": only, "only_first": first_only, "p_value": p,
                               "two_proportion_p": two_proportion(sum(won), len(won), rows[0]["successes"],
                                                                  rows[0]["episodes"])}
        rows.append(row)
    randoms = [by_key[0][k].get("random_success") for k in shared]
    floor = None
    if all(r is not None for r in randoms):
        kr = sum(map(bool, randoms))
        floor = {"successes": kr, "episodes": len(shared), "success_rate": kr / len(shared),
                 "ci95": wilson(kr, len(shared)), "outcomes": "".join("1" if r else "0" for r in randoms),
                 "note": f"from the first run's evaluation, {len(shared)} tasks"}
    return {"env": results[0].get("env"), "protocol": results[0].get("protocol"), "tasks": len(shared),
            "paired_by_order": by_order,
            "tasks_per_run": [len(r["per_episode"]) for r in results], "runs": rows, "random_floor": floor,
            "test": "exact McNemar (two-sided) on the shared tasks (over every seed where runs share a name): "
                    "only the tasks one solved and the other did not count; two_proportion_p: the pooled "
                    "two-proportion z-test of the two rates, unpaired (every episode an independent draw)"}


def format_table(cmp: dict[str, Any]) -> str:
    n, rows = cmp["tasks"], cmp["runs"]
    held = "" if set(cmp["tasks_per_run"]) == {n} else f" (the runs hold {', '.join(map(str, cmp['tasks_per_run']))})"
    seeds = rows[0]["runs"]
    pooled = f" x {seeds} runs per name, pooled" if seeds > 1 else ""
    order = " (a record without task keys: paired by task order, the random floors agreeing)" \
        if cmp.get("paired_by_order") else ""
    lines = [f"{cmp['env']}: {n} shared tasks{held}{pooled}; paired tests against the first, {rows[0]['name']}{order}"]
    w = max([len(r["name"]) for r in rows] + [len("random")]) + 2
    m = rows[0]["episodes"]
    sw = len(f"{m}/{m} = 100%") + 1

    def fmt(x, spec, unit=""):
        return "-" if x is None else f"{x:{spec}}{unit}"

    def success(k, total):
        return f"{k}/{total} = {k / total:.0%}"

    lines.append(f"  {'run':<{w}}{'success':>{sw}}  {'95% CI':<9}  {'vs first':<22}{'failures within':>15}"
                 f"  {'steps':>5}  {'plan p50':>9}" + (f"  {'z-test p':>8}  per run" if seeds > 1 else ""))
    for r in rows:
        lo, hi = r["ci95"]
        vs = r.get("vs_first")
        vs_txt = "-" if vs is None else f"+{vs['only_this']} / -{vs['only_first']}, p = {vs['p_value']:.2g}"
        lat = r["plan_ms_p50"]
        lines.append(f"  {r['name']:<{w}}{success(r['successes'], r['episodes']):>{sw}}  "
                     f"{f'{lo:.0%}-{hi:.0%}':<9}  {vs_txt:<22}{fmt(r['closest_failures'], '.2f', 'x'):>15}  "
                     f"{fmt(r['steps_to_success'], '.0f'):>5}  {fmt(None if lat is None else lat / 1e3, '.2f', ' s'):>9}"
                     + (f"  {fmt(vs and vs['two_proportion_p'], '.2g'):>8}  {' / '.join(map(str, r['per_run']))}"
                        if seeds > 1 else ""))
    fl = cmp["random_floor"]
    if fl:
        lo, hi = fl["ci95"]
        lines.append(f"  {'random':<{w}}{success(fl['successes'], fl['episodes']):>{sw}}  "
                     f"{f'{lo:.0%}-{hi:.0%}':<9}  ({fl['note']})")
    lines += ["  vs first: +k / -m tasks that only this run / only the first solved; p: exact McNemar on them.",
              "  failures within: median closest goal error of the failed tasks (x the tolerance; < 1 = success)."]
    if seeds > 1:
        lines.append("  z-test p: the pooled rates' two-proportion z-test against the first, unpaired (it treats "
                     "the seeds' repeats of a task as independent draws).")
    return "\n".join(lines)


def compare_runs(cfg: CompareConfig) -> dict[str, Any]:
    loaded = [load_results(p, cfg.planner_seeds, cfg.seeds) for p in cfg.runs]
    if cfg.seeds is not None and all("by_order" not in rs[0] for _, rs in loaded):  # only records set by_order
        raise ValueError(f"seeds={cfg.seeds} picks a reproduce.py record's training seeds, and none of the runs "
                         "is one; drop seeds= (an eval directory is one seed already)")
    names = list(cfg.names) if cfg.names else default_names([f for f, _ in loaded])
    cmp = compare([res for _, rs in loaded for res in rs],              # a record: its seeds, under its name
                  [name for (_, rs), name in zip(loaded, names) for _ in rs])
    cmp["files"] = [str(f) for f, _ in loaded]
    print(format_table(cmp))
    if cfg.out:
        from worldmodel.io import save_resolved, write_json_atomic
        from worldmodel.report.plots import plot_compare, safe_draw

        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / COMPARE_JSON, cmp)
        save_resolved(cfg, out)                                    # config.json: the command's keys
        safe_draw(plot_compare, cmp, out / COMPARE_PNG)
        print(f"wrote {out / COMPARE_JSON} and {out / COMPARE_PNG}")
    return cmp
