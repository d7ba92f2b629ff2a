"""Compute per decision: the floating-point operations one controller decision costs, planner by planner.

Each planner preset drives its own MPCController over the same task of `wm eval`'s protocol (the
checkpoint's env, first task, every planner on the same observations: the env replays the first
planner's actions for the others) with torch's FlopCounterMode counting every matmul, convolution
and attention (the operations that dominate; elementwise work is not counted) inside `act()`: the
observation's encoding, the plan, the surprise check where there is one. A decision is one plan;
the figure is the mean over the plans of `--steps` env steps, and the wall-clock time of the same
decisions (median) is measured too, planners interleaved decision by decision so machine noise hits
them alike. The counts do not depend on the machine; the times do.

    python -m benchmarks.decision_flops --checkpoint runs/repro/reacher_cpu_cnn/seed0/train/best.pt \
        --distilled runs/distill/reacher_seed0/policy.pt --planners policy cem

stdout: one JSON line (FLOPs and ms per decision per planner, ratios to the first); --json appends it.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import recipes as R


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt written by `wm train`")
    p.add_argument("--distilled", default=None, help="its `wm distill` policy.pt (needed by planner=policy)")
    p.add_argument("--planners", nargs="+", default=["policy", "cem"], help="configs/planner presets; "
                   "ratios are to the first")
    p.add_argument("--steps", type=int, default=40, help="env steps per planner (plans: steps / frameskip)")
    p.add_argument("--receding-horizon", type=int, default=1)
    p.add_argument("--goal-at", default="every_chunk", choices=["every_chunk", "last_chunk"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--json", default=None, help="also append the JSON line to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worldmodel.config import preset
    from worldmodel.evaluation.tasks import default_heldout_tasks, make_env
    from worldmodel.model.energy import GoalEnergy
    from worldmodel.model.world_model import load_trained
    from worldmodel.planners import planner_from_config
    from worldmodel.planners.mpc import MPCController

    if "policy" in a.planners and not a.distilled:
        raise SystemExit("decision_flops: planner policy needs --distilled <its policy.pt> (wm distill)")
    if a.threads:
        torch.set_num_threads(a.threads)
    model, meta, env_name = load_trained(a.checkpoint, "cpu")
    policy = None
    if a.distilled:
        from worldmodel.model.goal_policy import load_policy
        policy = load_policy(a.distilled, model)
    env = make_env(env_name, meta, model.cfg.image_size)
    task = default_heldout_tasks(env, meta, 1_000_003, 1, 25)[0]
    goal = env.goal_image(task.goal_state)
    ctrls = {}
    for name in a.planners:
        energy = GoalEnergy(model, goal_at=a.goal_at, policy=policy)
        ctrls[name] = MPCController(planner_from_config(preset("planner", name)), energy,
                                    (env.action_space.low, env.action_space.high), horizon=5,
                                    receding_horizon=a.receding_horizon, frameskip=model.cfg.frameskip,
                                    history=model.cfg.history)
        ctrls[name].reset(goal)
        ctrls[name].warmup(1)

    def episode(measure) -> dict[str, list[float]]:
        """The task once, planners interleaved on the same observations (the env follows the first
        planner's actions); measure(ctrl, obs) -> (action, figure), kept for the calls that planned."""
        for ctrl in ctrls.values():
            ctrl.reset(goal)
        obs, _ = env.reset(seed=task.seed, options={"state": task.start_state})
        got: dict[str, list[float]] = {n: [] for n in ctrls}
        for _ in range(a.steps):
            act = None
            for name, ctrl in ctrls.items():
                plans = ctrl.stats()["plans"]
                action, figure = measure(ctrl, obs)
                if ctrl.stats()["plans"] > plans:            # this call planned: a decision
                    got[name].append(figure)
                act = action if act is None else act
            obs, *_ = env.step(act)
        return got

    def counted(ctrl, obs):
        with FlopCounterMode(display=False) as counter:
            action = ctrl.act(obs)
        return action, counter.get_total_flops()

    def timed(ctrl, obs):
        t0 = time.perf_counter()
        action = ctrl.act(obs)
        return action, (time.perf_counter() - t0) * 1e3

    flops, ms = episode(counted), episode(timed)      # the same decisions, timed without the counter
    first = a.planners[0]
    per = {n: {"decisions": len(flops[n]), "gflops_per_decision": float(np.mean(flops[n])) / 1e9,
               "ms_per_decision_p50": float(np.median(ms[n]))} for n in ctrls}
    for n in ctrls:
        per[n]["flops_ratio_to_" + first] = per[n]["gflops_per_decision"] / per[first]["gflops_per_decision"]
        per[n]["time_ratio_to_" + first] = per[n]["ms_per_decision_p50"] / per[first]["ms_per_decision_p50"]
    enc = FlopCounterMode(display=False)
    with enc, torch.no_grad():
        model.encode(torch.from_numpy(np.asarray(goal)[None]))               # one frame
    out = {"bench": "decision_flops", "checkpoint": a.checkpoint, "distilled": a.distilled, "env": env_name,
           "receding_horizon": a.receding_horizon, "goal_at": a.goal_at, "steps": a.steps, "planners": per,
           "encode_one_frame_gflops": enc.get_total_flops() / 1e9,
           "note": "FLOPs of matmuls, convolutions and attention inside act() (encoding included), mean "
                   "per plan; ms: median wall-clock per plan, planners interleaved",
           "torch_threads": torch.get_num_threads(), "git": R.git_commit(), "machine": R.machine("cpu"),
           "date": time.strftime("%Y-%m-%d")}
    R.emit_line(out, a.json)
    return out


if __name__ == "__main__":
    main()
