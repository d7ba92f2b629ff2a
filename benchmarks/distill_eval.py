"""A distilled policy against CEM 300 x 30 on the same tasks: alone (planner=policy), or seeding CEM / iCEM.

Runs `wm eval` (the library's evaluate, same protocol as the reference eval: its tasks, budget,
goal offset, horizon) with a planner preset and the `wm distill` policy, then pairs every task with
the reference eval (the checkpoint's CEM 300 x 30 results.json: exact McNemar test) and counts the
compute per decision: candidate sequences the energy scores per plan (the policy's one forward pass
adds no rollout of the predictor beyond scoring its proposal once).

    python -m benchmarks.distill_eval --checkpoint runs/demo/train/best.pt \
        --distilled runs/distill/tworoom/policy.pt --reference runs/demo/eval/results.json \
        --planner policy --receding-horizon 1 --out runs/distill/tworoom/eval_policy

stdout: one JSON line (successes, the paired test, rollouts per decision, plan latency); --json also
appends it to a file. --set passes further `wm eval` overrides (e.g. --set planner.iterations=3).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.recipes import emit_line

PROTOCOL = ("episodes", "budget", "goal_offset", "eval_seed", "tasks", "horizon", "policy", "episode_len", "batch")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt written by `wm train`")
    p.add_argument("--distilled", required=True, help="its policy.pt written by `wm distill`")
    p.add_argument("--reference", required=True, help="the checkpoint's CEM 300 x 30 `wm eval` results.json")
    p.add_argument("--planner", default="policy", help="a configs/planner/<name>.yaml preset (policy, cem_seeded, ...)")
    p.add_argument("--receding-horizon", type=int, default=None, help="chunks run before replanning "
                   "(default: the reference's)")
    p.add_argument("--episodes", type=int, default=None, help="the first N of the reference's tasks (default: all)")
    p.add_argument("--set", nargs="*", default=[], help="further `wm eval` overrides, key=value")
    p.add_argument("--out", required=True, help="the eval's out= directory")
    p.add_argument("--json", default=None, help="also append the JSON line to this file")
    return p.parse_args(argv)


def rollouts_per_plan(planner: dict[str, Any]) -> int:
    """Candidate sequences one plan scores (each one predictor rollout over the horizon)."""
    from worldmodel.planners import planner_from_config

    pl = planner_from_config(planner)
    if hasattr(pl, "population"):                    # iCEM: a decaying population
        return sum(pl.population(i) for i in range(pl.iterations))
    return pl.samples * pl.iterations


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    from worldmodel.config import load
    from worldmodel.evaluation.config import EvalConfig
    from worldmodel.evaluation.evaluator import evaluate
    from worldmodel.evaluation.stats import mcnemar

    ref = json.loads(Path(a.reference).read_text())
    rc = ref["config"]
    over = [f"checkpoint={a.checkpoint}", f"planner={a.planner}", f"distilled={a.distilled}", f"out={a.out}",
            "overwrite=true", "videos=0", "random_floor=false", "progress=false",
            f"receding_horizon={a.receding_horizon or rc['receding_horizon']}"]
    over += [f"{k}={rc[k] if k != 'episodes' or a.episodes is None else a.episodes}" for k in PROTOCOL
             if rc.get(k) is not None]
    # the reference's energy: an eval from before goal_at= existed scored the last chunk only (step_weights null)
    over.append(f"goal_at={rc.get('goal_at') or 'last_chunk'}")
    cfg = load(EvalConfig, "eval", over + list(a.set))
    t0 = time.perf_counter()
    res = evaluate(cfg)
    mine = [e["success"] for e in res["per_episode"]]
    theirs = [e["success"] for e in ref["per_episode"]][:len(mine)]
    only_mine, only_ref, p = mcnemar(mine, theirs)
    per_plan, ref_plan = rollouts_per_plan(cfg.planner), rollouts_per_plan(rc["planner"])
    out = {"bench": "distill_eval", "checkpoint": a.checkpoint, "distilled": a.distilled, "env": res["env"],
           "planner": a.planner, "planner_settings": cfg.planner, "receding_horizon": cfg.receding_horizon,
           "goal_at": cfg.goal_at, "step_weights": cfg.step_weights,
           "episodes": res["episodes"], "successes": res["successes"],
           "reference": {"results": a.reference, "planner": rc["planner"], "receding_horizon": rc["receding_horizon"],
                         "successes": sum(theirs), "only_this": only_mine, "only_reference": only_ref,
                         "p_value": p, "rollouts_per_plan": ref_plan,
                         "plan_ms_p50": ref["latency_ms"]["p50"]},
           "success_vs_reference": res["successes"] / max(sum(theirs), 1),
           "rollouts_per_plan": per_plan, "rollouts_ratio": ref_plan / per_plan,
           "iterations_ratio": rc["planner"].get("iterations", 1) / max(cfg.planner.get("iterations", 1), 1),
           "plan_ms_p50": res["latency_ms"]["p50"], "plans": res["latency_ms"]["plans"],
           "note": "plan_ms: one batched solve for all episodes of a batch, encoding included; compare "
                   "latencies only when both ran on the same machine at the same load",
           "results": str(Path(a.out) / "results.json"), "wall_s": round(time.perf_counter() - t0, 1),
           "date": time.strftime("%Y-%m-%d")}
    emit_line(out, a.json)
    return out


if __name__ == "__main__":
    main()
