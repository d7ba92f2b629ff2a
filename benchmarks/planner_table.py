"""Planners at equal compute: `wm eval` with CEM, iCEM, MPPI and gradient on one checkpoint, each
given the same number of energy evaluations (action sequences scored) per plan (`equal_compute`).

    python -m benchmarks.planner_table --checkpoint runs/repro/tworoom_cpu/seed0/train/best.pt
    python -m benchmarks.planner_table --checkpoint ... --budget-sequences 3000 --planners cem icem

Every row plans the same tasks under the LeWM protocol and keeps its per-task `outcomes`;
`--reference results.json` adds an exact McNemar test of each row against an earlier eval of the
same tasks. stdout: one JSON line per planner; the whole table goes to --json (atomic write).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import recipes as R  # noqa: E402
from worldmodel.io import write_json_atomic  # noqa: E402
from worldmodel.evaluation.stats import mcnemar  # noqa: E402

ITERATIONS = {"cem": 30, "mppi": 6, "icem": 10, "gradient": 50}
ELITES = {"cem": 30, "mppi": 64, "icem": 20}


def icem_sequences(samples: int, iterations: int, elites: int) -> int:
    """Sequences scored by one iCEM solve: ICEM.population summed over its iterations."""
    from worldmodel.planners.icem import ICEM

    icem = ICEM(samples=samples, iterations=iterations, elites=elites)
    return sum(icem.population(i) for i in range(iterations))


def equal_compute(planner: str, budget: int) -> tuple[dict[str, Any], int]:
    """Planner overrides spending about `budget` sequence evaluations per plan, and the exact count.

    cem and mppi keep their iterations (LeWM's 30, TD-MPC2's 6) and get samples = budget / iterations.
    icem: the largest first population whose decaying populations sum to <= budget (carried elites
    keep their costs, so cost nothing). gradient: a backward pass costs about two forwards (the usual
    rule for dense layers), so a restart of I energy calls costs 3 I - 2 sequences."""
    it = ITERATIONS[planner]
    if planner == "gradient":
        s = max(1, budget // (3 * it - 2))
        return {"samples": s, "iterations": it}, s * (3 * it - 2)
    if planner == "icem":
        e = ELITES["icem"]
        if icem_sequences(e, it, e) > budget:
            raise ValueError(f"--budget-sequences {budget} is below iCEM's floor of "
                             f"{icem_sequences(e, it, e)} (10 iterations of >= 2 x 20 elites)")
        s = e
        while icem_sequences(s + 1, it, e) <= budget:
            s += 1
        return {"samples": s, "iterations": it, "elites": e}, icem_sequences(s, it, e)
    s = max(2, budget // it)
    return {"samples": s, "iterations": it, "elites": min(ELITES[planner], s)}, s * it


def tasks(ev: dict[str, Any]) -> list[tuple]:
    """The tasks an eval planned: (index, seed, start step) each."""
    return sorted((e["index"], e["seed"], e["start_step"]) for e in ev["per_episode"])


def load_reference(path: str, episodes: int) -> dict[str, Any]:
    """A `wm eval` results.json to compare every row with, checked before any planning."""
    import json

    try:
        ref = json.loads(Path(path).read_text())
        ok = len(ref["per_episode"]) == episodes and {"planner", "successes", "config"} <= ref.keys()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"planner_table: --reference {path} is not a readable `wm eval` results.json ({e})")
    if not ok:
        raise SystemExit(f"planner_table: --reference {path} has {len(ref.get('per_episode', []))} episodes, "
                         f"this table plans {episodes}: give an eval of the same tasks (or --episodes)")
    return ref


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt written by `wm train`")
    p.add_argument("--env", default=None, help="default: the env of the checkpoint's data")
    p.add_argument("--planners", nargs="+", default=["cem", "icem", "mppi", "gradient"],
                   choices=sorted(ITERATIONS))
    p.add_argument("--budget-sequences", type=int, default=9000, help="energy evaluations per plan")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--batch", type=int, default=50, help="episodes planned together")
    p.add_argument("--videos", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default; 1 on a busy box)")
    p.add_argument("--out", default="runs/planner_table")
    p.add_argument("--json", default=None, help="default benchmarks/results/planner_table_<env>.json")
    p.add_argument("--reference", default=None,
                   help="a `wm eval` results.json of this checkpoint on the same tasks: paired test per row")
    p.add_argument("--dry-run", action="store_true", help="print the wm commands, run nothing")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    a = parse(argv)
    plans = {}
    for i, name in enumerate(a.planners):
        overrides, sequences = equal_compute(name, a.budget_sequences)
        args = R.wm_eval_args(a.checkpoint, Path(a.out) / name, name, overrides, episodes=a.episodes,
                              batch=a.batch, videos=a.videos, device=a.device, random_floor=i == 0,
                              env=a.env, progress=not a.quiet)
        plans[name] = (overrides, sequences, args)
    if a.dry_run:
        for name, (_, seq, args) in plans.items():
            R.line({"bench": "planner_table", "dry_run": True, "planner": name, "sequences_per_plan": seq,
                    "command": R.command("eval", args)})
        return None

    if not Path(a.checkpoint).is_file():
        raise SystemExit(f"planner_table: no checkpoint at {a.checkpoint}; train one with "
                         "`python -m benchmarks.reproduce` or `wm train`")
    ref = load_reference(a.reference, a.episodes) if a.reference else None
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    head = {"bench": "planner_table", "checkpoint": a.checkpoint, "budget_sequences": a.budget_sequences,
            "git": R.git_commit(), "machine": R.machine(a.device)}
    rows, floor = [], None
    for name, (overrides, sequences, args) in plans.items():
        t = time.perf_counter()
        ev = R.run_stage("eval", args)
        floor = floor or ev["random_floor"]
        row = {"bench": "planner_table", "env": ev["env"], "planner": name, "settings": overrides,
               "sequences_per_plan": sequences, "budget_sequences": a.budget_sequences,
               "success_rate": ev["success_rate"], "successes": ev["successes"], "ci95": ev["ci95"],
               "episodes": ev["episodes"], "latency_ms_p50": ev["latency_ms"]["p50"],
               "latency_ms_p95": ev["latency_ms"]["p95"], "plan_batch": ev["latency_ms"]["batch"],
               "eval_s": round(time.perf_counter() - t, 2), "device": ev["device"],
               "gpu": head["machine"]["gpu"], "command": R.command("eval", args),
               "outcomes": R.outcomes(ev["per_episode"])}
        if ref is not None:
            if tasks(ev) != tasks(ref):
                raise SystemExit(f"planner_table: {a.reference} planned other tasks than this eval "
                                 "(seeds or start steps differ); give an eval of the same protocol")
            row_only, ref_only, p = mcnemar([c == "1" for c in row["outcomes"]],
                                            [c == "1" for c in R.outcomes(ref["per_episode"])])
            row["vs_reference"] = {"row_only": row_only, "reference_only": ref_only, "p_value": p}
        R.line(row)
        rows.append(row)
    env = rows[0]["env"]
    if ref is not None:
        head["reference"] = {"results": a.reference, "planner": ref["planner"],
                             "settings": ref["config"]["planner"], "successes": ref["successes"],
                             "outcomes": R.outcomes(ref["per_episode"])}
    record = {**head, "env": env, "random_floor": floor, "rows": rows,
              "equivalence": "cem S*30; mppi S*6; icem sum of decaying populations over 10 iterations; "
                             "gradient S*(3*50-2) (backward ~ 2 forwards)"}
    path = Path(a.json or R.ROOT / "benchmarks" / "results" / f"planner_table_{env}.json")
    write_json_atomic(path, record)
    print(f"planner_table: wrote {path}", file=sys.stderr)
    return record


if __name__ == "__main__":
    main()
