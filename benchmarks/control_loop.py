"""Real-time goal reaching: `wm eval`'s tasks, one robot at a time, through the robot-stack path.

Each of `wm eval`'s tasks is run by `ControlLoop(MPCController(...), env, hz)` at a fixed
wall-clock rate, one env at a time, the planner in a background thread (`async_lead`), until the
env's success test holds or the step budget runs out. `--reference` (the checkpoint's offline
`wm eval` results.json) adds the exact McNemar test on the tasks both ran.

    python -m benchmarks.control_loop --checkpoint runs/demo/train/best.pt --planner icem_cpu \
        --hz 10 --async-lead 5 --episodes 20 --reference runs/demo/eval/results.json

stdout: one JSON line per run (success, outcomes, loop rate, overruns, latency, stalls); --json
also appends it to a file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks import recipes as R  # noqa: E402
from worldmodel.config import group_options, preset  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt written by `wm train`")
    p.add_argument("--planner", default="icem_cpu", help="a configs/planner/<name>.yaml preset")
    p.add_argument("--hz", type=float, default=None, help="control rate (default: the env's own)")
    p.add_argument("--async-lead", type=int, default=5,
                   help="plan the next chunk when this many actions are left (-1: plan synchronously)")
    p.add_argument("--time-budget", type=float, default=None, help="per-plan deadline in seconds")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--budget", type=int, default=50, help="env steps per task")
    p.add_argument("--goal-offset", type=int, default=25)
    p.add_argument("--eval-seed", type=int, default=1_000_003)
    p.add_argument("--horizon", type=int, default=5)
    p.add_argument("--receding-horizon", type=int, default=5, help="chunks executed before replanning")
    p.add_argument("--step-weights", type=float, nargs="+", default=None,
                   help="one weight per planned chunk (e.g. 1 1 1 1 1: every chunk's distance to the goal); "
                        "default: --goal-at's")
    p.add_argument("--goal-at", default="last_chunk", choices=["every_chunk", "last_chunk"],
                   help="where the goal distance counts (default last_chunk, LeWM's, as --receding-horizon 5)")
    p.add_argument("--distilled", default=None, help="a `wm distill` policy.pt of --checkpoint: the energy "
                   "proposes with it (--planner policy, cem_seeded)")
    p.add_argument("--seed", type=int, default=None, help="planner seed (default: the preset's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--compile", action="store_true",
                   help="GoalEnergy(compile=True): compiled for every history length before the first task")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the predictor's dtype")
    p.add_argument("--reference", default=None, help="the checkpoint's `wm eval` results.json (same tasks)")
    p.add_argument("--json", default=None, help="also append the JSON line to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    from worldmodel.evaluation.config import valid_step_weights

    w = a.step_weights
    if w is not None and not valid_step_weights(w, a.horizon):
        raise SystemExit(f"control_loop: --step-weights {w}: give one finite weight >= 0 per planned chunk "
                         f"({a.horizon}, --horizon), not all 0, e.g. --step-weights {' '.join(['1'] * a.horizon)}")
    import torch

    from worldmodel.planners import planner_from_config
    from worldmodel.planners.loop import ControlLoop
    from worldmodel.planners.mpc import MPCController
    from worldmodel.model.energy import DTYPES, GoalEnergy
    from worldmodel.evaluation.tasks import default_heldout_tasks, make_env
    from worldmodel.evaluation.stats import mcnemar
    from worldmodel.model.world_model import load_trained

    if a.planner not in group_options("planner"):
        raise SystemExit(f"control_loop: no planner preset configs/planner/{a.planner}.yaml; choose one of "
                         f"{group_options('planner')}")
    ref = json.loads(Path(a.reference).read_text()) if a.reference else None
    if ref is not None and (len(ref["per_episode"]) < a.episodes or ref["protocol"]["eval_seed"] != a.eval_seed
                            or ref["protocol"]["budget"] != a.budget
                            or ref["protocol"]["goal_offset"] != a.goal_offset):
        raise SystemExit(f"control_loop: {a.reference} ran another protocol or fewer than {a.episodes} "
                         "tasks; give the checkpoint's eval with the same eval_seed, budget and goal_offset")
    if a.threads:
        torch.set_num_threads(a.threads)
    model, meta, env_name = load_trained(a.checkpoint, "cpu")
    env = make_env(env_name, meta, model.cfg.image_size)
    hz = a.hz or float(env.env_info().control_hz)
    tasks = default_heldout_tasks(env, meta, a.eval_seed, a.episodes, a.goal_offset)
    planner = planner_from_config(preset("planner", a.planner),
                                  **({} if a.seed is None else {"seed": a.seed}))
    policy = None
    if a.distilled:                     # a `wm distill` policy the energy proposes with (planner=policy, cem_seeded)
        from worldmodel.model.goal_policy import load_policy
        policy = load_policy(a.distilled, model)
    energy = GoalEnergy(model, dtype=DTYPES[a.precision], compile=a.compile, step_weights=w,
                        goal_at=a.goal_at, policy=policy)
    ctrl = MPCController(planner, energy, (env.action_space.low, env.action_space.high),
                         horizon=a.horizon, receding_horizon=a.receding_horizon, frameskip=model.cfg.frameskip,
                         history=model.cfg.history, time_budget_s=a.time_budget,
                         async_lead=None if a.async_lead < 0 else a.async_lead)
    loop = ControlLoop(ctrl, env, hz=hz)
    ctrl.reset(env.goal_image(tasks[0].goal_state))
    t_warm = time.perf_counter()
    ctrl.warmup(1)              # allocation, the first plan and (--compile) every compilation outside the clock
    warmup_s = time.perf_counter() - t_warm
    rows, lat, t_start = [], [], time.perf_counter()
    try:
        for t in tasks:
            obs, _ = env.reset(seed=t.seed, options={"state": t.start_state})
            rep = loop.run(env.goal_image(t.goal_state), a.budget, obs=obs,
                           stop_when=lambda o, info, g=t.goal_state: env.is_success(info["state"], g))
            st = ctrl.stats()
            lat += ctrl.latencies_s
            rows.append({"index": t.index, "success": rep.terminated, "steps": rep.steps,
                         "overruns": rep.overruns, "hz_achieved": round(rep.hz_achieved, 2),
                         "step_ms_p95": round(rep.step_ms_p95, 1), "plans": st["plans"],
                         "async_stalls": st["async_stalls"], "deadline_misses": st["deadline_misses"]})
    finally:
        ctrl.close()
    outcomes = R.outcomes(rows)
    steps = sum(r["steps"] for r in rows)
    out = {"bench": "control_loop", "checkpoint": a.checkpoint, "env": env_name, "planner": a.planner,
           "planner_settings": {k: v for k, v in vars(planner).items() if not k.startswith("_")},
           "hz": hz, "horizon": a.horizon, "receding_horizon": a.receding_horizon, "step_weights": w,
           "goal_at": a.goal_at, "distilled": a.distilled,
           "async_lead": None if a.async_lead < 0 else a.async_lead, "time_budget_s": a.time_budget,
           "compile": a.compile, "precision": a.precision, "warmup_s": round(warmup_s, 1),
           "episodes": len(rows), "successes": outcomes.count("1"), "outcomes": outcomes,
           "steps": steps, "overruns": sum(r["overruns"] for r in rows),
           "hz_achieved_median": float(np.median([r["hz_achieved"] for r in rows])),
           "plan_ms_p50": round(float(np.percentile(lat, 50)) * 1e3, 1) if lat else None,
           "plan_ms_p95": round(float(np.percentile(lat, 95)) * 1e3, 1) if lat else None,
           "async_stalls": sum(r["async_stalls"] for r in rows),
           "deadline_misses": sum(r["deadline_misses"] for r in rows),
           "wall_s": round(time.perf_counter() - t_start, 1), "per_episode": rows,
           "torch_threads": torch.get_num_threads(), "git": R.git_commit(), "machine": R.machine("cpu"),
           "date": time.strftime("%Y-%m-%d")}
    if ref is not None:
        theirs = R.outcomes(ref["per_episode"])[:len(rows)]
        loop_only, ref_only, p = mcnemar([c == "1" for c in outcomes], [c == "1" for c in theirs])
        out["reference"] = {"results": a.reference, "planner": ref["planner"], "successes": theirs.count("1"),
                            "loop_only": loop_only, "reference_only": ref_only, "p_value": p}
    R.emit_line(out, a.json)
    return out


if __name__ == "__main__":
    main()
