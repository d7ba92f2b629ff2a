"""Reproduce one row of the results table from an empty disk: collect -> (train -> eval) per seed.

    python -m benchmarks.reproduce --env tworoom --scale cpu --seeds 0 1 2
    python -m benchmarks.reproduce --env reacher --scale cpu --dry-run       # print the wm commands

The recipe (benchmarks/recipes.py) fixes every setting; a flag that overrides one records the run
as `"verified": false`. Each stage is the code of its `wm` command, run in-process; evaluation
follows the LeWM protocol and runs the random-action floor on the same tasks. Each checkpoint is
planned with the toolkit's default planning (the row's headline fields) and, unless --plannings and
--draws say otherwise, with LeWM's and on LeWM's task draw too (the row's "evals"); `--plannings toolkit
lewm distilled` also distills a policy from each checkpoint (`wm distill`) and plans with the default
planner seeded by it. `--ensemble K` trains K models per training seed s
(seeds s*K .. s*K+K-1) and plans with their mean energy (`wm eval ensemble=[...]`; evals in
ensemble<s>/). stdout: one JSON line per seed, then an aggregate line with the published numbers
as "reference". The record goes to --json after every seed, so a killed run keeps its finished
seeds (`train_from_step` > 0: training resumed at that step, and `train_s` counts only the steps
after it).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import recipes as R  # noqa: E402
from worldmodel.io import write_json_atomic  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", required=True, choices=sorted({e for e, _ in R.RECIPES}))
    p.add_argument("--scale", default="cpu", choices=sorted(R.SCALE_LABELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    p.add_argument("--out", default=None, help="run directory (default runs/repro/<env>_<scale>)")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/<env>_<scale>.json)")
    p.add_argument("--dry-run", action="store_true", help="print the wm commands, run nothing")
    p.add_argument("--planner-seeds", type=int, default=1, metavar="N",
                   help="plan each training seed with planner seeds 0..N-1 (default 1: seed 0 only)")
    p.add_argument("--plannings", nargs="+", default=list(R.DEFAULT_PLANNINGS), choices=list(R.PLANNINGS),
                   help="plannings of every checkpoint (default: toolkit lewm; distilled also runs wm distill "
                        "per seed; the first is the row's headline)")
    p.add_argument("--draws", nargs="+", default=list(R.DRAWS), choices=list(R.DRAWS),
                   help="task draws (default: both; the first is the row's headline)")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run in --out (collect and train resume; eval reruns)")
    p.add_argument("--quiet", action="store_true", help="no progress bars on stderr")
    R.add_override_args(p)
    a = p.parse_args(argv)
    if a.ensemble is not None and a.ensemble < 1:
        p.error(f"--ensemble {a.ensemble}: models per training seed, at least 1")
    if a.planner_seeds < 1:
        p.error(f"--planner-seeds {a.planner_seeds}: the number of planner seeds, at least 1 (seed 0)")
    return a


def plan(a: argparse.Namespace) -> tuple[R.Recipe, dict[str, Any], Path, dict[str, Any]]:
    """Recipe, overrides, run directory and the stage argument lists (one train/eval per seed)."""
    recipe, changed = R.recipe_from_args(a)
    plannings, draws = list(dict.fromkeys(a.plannings)), list(dict.fromkeys(a.draws))
    out = Path(a.out or f"runs/repro/{R.slug(a.env)}_{a.scale}")
    progress = not a.quiet
    stages: dict[str, Any] = {"collect": R.collect_args(recipe, out / "data", 0, progress, a.resume),
                              "plannings": plannings, "draws": draws, "seeds": {}}
    for s in a.seeds:
        members = R.member_seeds(recipe, s)
        ckpts = [out / f"seed{m}" / "train" / "best.pt" for m in members]
        ckpt, ens = ckpts[0], tuple(ckpts[1:])
        run_dir = out / (f"seed{s}" if recipe.ensemble == 1 else f"ensemble{s}")   # its evals
        stages["seeds"][s] = {
            "train": {m: R.train_args(recipe, out / "data", out / f"seed{m}" / "train", m, progress, a.resume,
                                      tuple(a.train_extra)) for m in members},
            "distill": (R.distill_args(recipe, ckpt, R.distilled_policy(ckpt).parent, progress)
                        if "distilled" in plannings else None),
            "eval": R.eval_args(recipe, ckpt, run_dir / "eval", progress=progress,
                                planning=plannings[0], draw=draws[0], ensemble=ens),
            "planner_evals": {k: R.eval_args(recipe, ckpt, run_dir / f"eval_planner{k}", progress=progress,
                                             planner_seed=k, planning=plannings[0], draw=draws[0], ensemble=ens)
                              for k in range(1, a.planner_seeds)},
            # the other (planning, draw) pairs, each in eval_<planning>_<draw>
            "evals": {f"{p}/{d}": R.eval_args(recipe, ckpt, run_dir / f"eval_{p}_{d}",
                                              progress=progress, planning=p, draw=d, videos=False,
                                              random_floor=p == plannings[0], ensemble=ens)   # once per draw
                      for d in draws for p in plannings if (p, d) != (plannings[0], draws[0])}}
    return recipe, changed, out, stages


def aggregate(env: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / min / max success over seeds, pooled successes with a Wilson interval, and the floor;
    with more planner seeds, the same pooled over every (training seed, planner seed) eval."""
    from worldmodel.evaluation.stats import wilson

    rates = [r["success_rate"] for r in rows]
    k, n = sum(r["successes"] for r in rows), sum(r["eval_episodes"] for r in rows)
    floors = [r["random_floor"]["success_rate"] for r in rows if r.get("random_floor")]
    agg = {"seeds": [r["seed"] for r in rows], "success_mean": sum(rates) / len(rates),
           "success_min": min(rates), "success_max": max(rates),
           "pooled": {"successes": k, "episodes": n, "success_rate": k / n, "ci95": wilson(k, n)},
           "random_floor_mean": sum(floors) / len(floors) if floors else None,
           "reference_pct": R.REFERENCE.get(env)}
    by_eval: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        for name, e in r.get("evals", {}).items():
            by_eval.setdefault(name, []).append(e)
    if by_eval:                 # each other (planning, draw): its successes per seed and pooled
        agg["evals"] = {}
        for name, es in by_eval.items():
            k, n = sum(e["successes"] for e in es), sum(e["episodes"] for e in es)
            agg["evals"][name] = {"per_seed": [e["successes"] for e in es], "successes": k, "episodes": n,
                                  "success_rate": k / n, "ci95": wilson(k, n)}
    evals = [(r["successes"], r["eval_episodes"]) for r in rows]
    evals += [(e["successes"], e["episodes"]) for r in rows for e in r.get("planner_seeds", [])]
    if len(evals) > len(rows):
        k, n = sum(e[0] for e in evals), sum(e[1] for e in evals)
        agg["over_planner_seeds"] = {
            "evals": len(evals), "successes": k, "episodes": n, "success_rate": k / n, "ci95": wilson(k, n),
            "success_min": min(e[0] / e[1] for e in evals), "success_max": max(e[0] / e[1] for e in evals),
            "note": "every (training seed, planner seed) eval pooled; they pose the same tasks, so the "
                    "interval, which counts each episode as independent, is narrower than it should be"}
    return agg


def summary(env: str, rows: list[dict[str, Any]], head: dict[str, Any]) -> dict[str, Any]:
    """The record's rows, their aggregate line and the published reference numbers."""
    agg = {**{k: head[k] for k in ("bench", "env", "scale", "verified")}, "aggregate": True,
           **aggregate(env, rows),
           "reference": {"source": "LeWM paper, success %", **(R.REFERENCE.get(env) or {})}}
    return {"per_seed": rows, "aggregate": agg, "reference": agg["reference"]}


def earlier_record(path: Path, recipe: R.Recipe, changed: dict[str, Any],
                   dataset: dict[str, Any]) -> dict[str, Any] | None:
    """The record already at `path` when it is the same recipe, overrides and dataset (so `--seeds 1 2
    --resume` adds seeds to a seed-0 row, and a rerun can keep a row's training time); else None."""
    import json

    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    def settings(r: dict[str, Any]) -> dict[str, Any]:         # what defines the run (not its notes)
        return {k: v for k, v in json.loads(json.dumps(r)).items() if k not in ("budget_note", "verified")}

    same = (settings(old.get("recipe", {})) == settings(dataclasses.asdict(recipe))
            and old.get("overrides") == changed
            and all(old.get("dataset", {}).get(k) == dataset[k] for k in ("path", "episodes", "frames")))
    return old if same else None


def eval_row(ev: dict[str, Any], eval_s: float, args: list[str]) -> dict[str, Any]:
    """One more eval of a training seed (another planner seed, planning or task draw): its success,
    per-task outcomes (and the random floor's, where it ran), the tasks of a draw of its own."""
    row = {"successes": ev["successes"], "episodes": ev["episodes"],
           "success_rate": ev["success_rate"], "ci95": ev["ci95"], "outcomes": R.outcomes(ev["per_episode"]),
           "planner": ev["planner"], "protocol": ev["protocol"], "plan_latency_ms_p50": ev["latency_ms"]["p50"],
           "eval_s": round(eval_s, 2), "command": R.command("eval", args),
           "results": str(Path(ev["config"]["out"]) / "results.json")}
    if ev["random_floor"]:
        row |= {"random_floor": ev["random_floor"]["successes"],
                "random_outcomes": R.outcomes(ev["per_episode"], "random_success")}
    if ev["protocol"].get("tasks") != "heldout":
        row["tasks"] = R.tasks(ev["per_episode"])
    return row


FINAL = ("step", "loss", "pred", "val_pred", "val_nochange", "val_ratio", "eff_rank", "std_min", "std_mean",
         "probe_r2")   # what a row keeps of a training's end


def train_member(args: list[str], was: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train (or resume) one model; its training time and end state. A finished run resumed again
    trains nothing: its time is the earlier record's (`was`, the row; an ensemble's member row)."""
    tr, wall = timed("train", args)
    final = {k: tr.get(k) for k in FINAL}
    if tr.get("steps_per_s"):
        return {"train_s": tr.get("train_s"), "train_wall_s": round(wall, 2),
                "train_from_step": tr.get("start_step", 0), "final": final}
    was = next((x for x in was.get("members", []) if x["seed"] == seed), was)
    return {"train_s": was.get("train_s"), "train_wall_s": was.get("train_wall_s"),
            "train_from_step": was.get("train_from_step", 0), "final": final}


def timed(name: str, args: list[str]) -> tuple[dict[str, Any], float]:
    """Run one stage; its result and wall time in seconds."""
    t = time.perf_counter()
    res = R.run_stage(name, args)
    return res, time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    a = parse(argv)
    recipe, changed, out, stages = plan(a)
    commands = [R.command("collect", stages["collect"])]
    for s in a.seeds:
        st = stages["seeds"][s]
        commands += [*[R.command("train", x) for x in st["train"].values()],
                     *([R.command("distill", st["distill"])] if st["distill"] else []),
                     R.command("eval", st["eval"]),
                     *[R.command("eval", x) for x in st["planner_evals"].values()],
                     *[R.command("eval", x) for x in st["evals"].values()]]
    if a.dry_run:
        R.line({"bench": "reproduce", "dry_run": True, "env": a.env, "scale": R.SCALE_LABELS[a.scale],
                "recipe": dataclasses.asdict(recipe), "overrides": changed, "commands": commands})
        print("\n".join(commands), file=sys.stderr)
        return None

    if recipe.threads:                  # eval runs in this process too: same thread count
        import torch
        torch.set_num_threads(recipe.threads)
    head = {"bench": "reproduce", "env": a.env, "scale": recipe.scale_label,
            "verified": not changed, "overrides": changed,
            "git": R.git_commit(), "machine": R.machine(recipe.device)}
    col, collect_s = timed("collect", stages["collect"])
    dataset = {**R.dataset_size(out / "data"), "path": str(out / "data"),
               "collect_frames_per_s": col.get("frames_per_s")}
    path = Path(a.json or R.ROOT / "benchmarks" / "results" / f"{R.slug(a.env)}_{a.scale}.json")
    earlier = earlier_record(path, recipe, changed, dataset)
    rows = {r["seed"]: r for r in (earlier or {}).get("per_seed", [])}    # by seed; this run replaces them
    if earlier and not col.get("new_episodes"):      # the dataset was collected by the earlier run
        dataset, collect_s = earlier["dataset"], earlier["collect_s"]
    for s in a.seeds:
        st = stages["seeds"][s]
        trained = {m: train_member(args, rows.get(s, {}), m) for m, args in st["train"].items()}
        first = trained[min(trained)]
        tr = first["final"]
        train_s, train_wall = (None if None in x else round(sum(x), 2)          # None: a time not on record
                               for x in ([t[k] for t in trained.values()] for k in ("train_s", "train_wall_s")))
        from_step = first["train_from_step"]
        distill = None
        if st["distill"]:                   # resume: a policy of this run's finished distill is kept
            was = rows.get(s, {}).get("distill")
            if a.resume and was and R.distilled_policy(out / f"seed{min(trained)}" / "train" / "best.pt").is_file():
                distill = was
            else:
                dres, distill_s = timed("distill", st["distill"])
                distill = {"val_ratio": dres["val_ratio"], "train_episodes": dres["train_episodes"],
                           "distill_s": round(distill_s, 2), "command": R.command("distill", st["distill"])}
        ev, eval_s = timed("eval", st["eval"])
        row = {**{k: head[k] for k in ("bench", "env", "scale", "verified")}, "seed": s,
               "planning": stages["plannings"][0], "draw": stages["draws"][0],
               "success_rate": ev["success_rate"], "successes": ev["successes"], "ci95": ev["ci95"],
               "random_floor": ev["random_floor"], "eval_episodes": ev["episodes"],
               "goal_error": ev.get("goal_error"),
               # one character per task, in task order (1 = success): runs on the same tasks can be
               # compared task by task (paired), not only by their rates
               "outcomes": R.outcomes(ev["per_episode"]),
               "random_outcomes": (R.outcomes(ev["per_episode"], "random_success")
                                   if ev["random_floor"] else None),
               "planner": ev["planner"], "plan_latency_ms_p50": ev["latency_ms"]["p50"],
               "plan_batch": ev["latency_ms"]["batch"], "dataset": dataset,
               "collect_s": round(collect_s, 2), "train_s": train_s,
               "train_wall_s": train_wall, "train_from_step": from_step, "eval_s": round(eval_s, 2),
               "train_final": tr,
               "distill": distill, "device": ev["device"], "gpu": head["machine"]["gpu"],
               "commands": [commands[0], *[R.command("train", x) for x in st["train"].values()],
                            R.command("eval", st["eval"])],
               "git_commit": head["git"]["commit"],
               "results": str(Path(ev["config"]["out"]) / "results.json")}
        if len(trained) > 1:                # an ensemble: each model's seed, training time and end state
            row["members"] = [{"seed": m, **t} for m, t in trained.items()]
        if st["planner_evals"]:
            row["planner_seeds"] = [{"planner_seed": k, **eval_row(*timed("eval", args), args)}
                                    for k, args in st["planner_evals"].items()]
        if st["evals"]:
            row["evals"] = {name: eval_row(*timed("eval", args), args) for name, args in st["evals"].items()}
        R.line(row)
        rows[s] = row
        # written after every seed: a killed run keeps its finished seeds (and their training times)
        record = {**head, "recipe": dataclasses.asdict(recipe), "plannings": {p: R.PLANNINGS[p] for p in stages["plannings"]},
                  "draws": stages["draws"], "commands": commands, "dataset": dataset,
                  "collect_s": round(collect_s, 2), "pending_seeds": a.seeds[a.seeds.index(s) + 1:],
                  # the tasks every row's outcomes follow, so `wm compare` can pair records task by task
                  "protocol": ev["protocol"], "tasks": R.tasks(ev["per_episode"]),
                  **summary(a.env, sorted(rows.values(), key=lambda r: r["seed"]), head)}
        write_json_atomic(path, record)
    R.line(record["aggregate"])
    print(f"reproduce: wrote {path}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
