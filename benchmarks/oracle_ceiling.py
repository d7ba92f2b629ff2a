"""Oracle ceilings: what the planner achieves on `wm eval`'s own tasks when prediction is perfect.

The learned parts are swapped for the simulator, one at a time, on exactly the tasks, budget and
controller `wm eval` used: `state` plans on simulator dynamics scored by the env's own success
measure (the ceiling of planner + protocol, no model); `latent` plans on simulator dynamics scored
by the model's encoder energy on the rendered states. Below `state`, the encoder's energy misleads;
near it and far above `wm eval`, the predictor is what fails.

    python -m benchmarks.oracle_ceiling --eval runs/pusht/eval/results.json           # state + latent
    python -m benchmarks.oracle_ceiling --env pusht --costs state --episodes 20       # no model

stdout: one JSON line (bench "oracle_ceiling"); --json also writes it to a file.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch



class SimEnergy:
    """planners.goal.GoalEnergyLike on the simulator. Observations and goals are env states (B, S);
    a candidate's cost is `cost(final states (N, S), goal states (N, S)) -> (N,)` of the state the
    simulator reaches at the end of its action chunks."""

    def __init__(self, sim, frameskip: int, cost: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.sim, self.frameskip, self.cost = sim, frameskip, cost
        self.goal: np.ndarray | None = None
        self.current: np.ndarray | None = None

    def set_goal(self, goal_states: np.ndarray) -> None:
        self.goal = np.asarray(goal_states, dtype=np.float64)                 # (B, S)

    def set_observation(self, obs_history: np.ndarray, past_actions: np.ndarray) -> None:
        self.current = np.asarray(obs_history, dtype=np.float64)[:, -1]       # (B, S)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        B, Sm, H, C = actions.shape                                           # (B, Sm, H, fs*A)
        A = C // self.frameskip
        # host sync: the candidates leave the device for the simulator
        a = actions.detach().double().cpu().numpy().reshape(B * Sm, H * self.frameskip, A)
        final = self.sim(np.repeat(self.current, Sm, axis=0), a)[:, -1]      # (B*Sm, S)
        costs = self.cost(final, np.repeat(self.goal, Sm, axis=0))            # (B*Sm,)
        return torch.as_tensor(costs, dtype=actions.dtype, device=actions.device).view(B, Sm)


def state_cost(env, shape: str = "max") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The env's success measure of each final state: `max` = goal_error itself (< 1 is success);
    `sumsq` = the sum of its squared errors (goal_errors), a smooth distance shaped like the
    latent energy, which still rewards the errors that are not the largest."""
    if shape == "max":
        return lambda final, goal: np.array([env.goal_error(f, g) for f, g in zip(final, goal)])
    return lambda final, goal: np.array([np.square(env.goal_errors(f, g)).sum() for f, g in zip(final, goal)])


def latent_cost(model, render_env, chunk: int = 2048) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The model's energy on the simulator's frames: ||enc(render(final)) - enc(render(goal))||^2.
    One render env draws every task's frames: an env whose reset places scenery outside the state
    (a dm_control target marker) shows its own episode's there, so use the state oracle for those."""
    device = next(model.parameters()).device
    goal_cache: dict[bytes, torch.Tensor] = {}

    def render(state: np.ndarray) -> np.ndarray:
        render_env.set_state(state)       # an env of its own: nothing else reads its state
        return render_env.render()

    @torch.no_grad()
    def encode(states: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(states), chunk):
            frames = np.stack([render(s) for s in states[i:i + chunk]])            # (n, H, W, 3)
            out.append(model.encode(torch.as_tensor(frames, device=device)))         # (n, D)
        return torch.cat(out)

    def cost(final: np.ndarray, goal: np.ndarray) -> np.ndarray:
        keys = [g.tobytes() for g in goal]
        for k, g in zip(keys, goal):
            if k not in goal_cache:
                goal_cache[k] = encode(g[None])[0]                              # (D,)
        z_goal = torch.stack([goal_cache[k] for k in keys])                     # (N, D)
        return (encode(final) - z_goal).square().sum(-1).cpu().numpy()          # (N,)
    return cost


def planner_file(name: str) -> dict:
    """configs/planner/<name>.yaml: the planner group `wm eval planner=<name>` selects."""
    from worldmodel.config import preset

    return preset("planner", name)


def protocol(a) -> dict:
    """The eval's protocol and planner settings: from its results.json, or the eval defaults."""
    from worldmodel.evaluation.config import EvalConfig as CONFIG

    if a.eval:
        ev = json.loads(Path(a.eval).read_text())
        cfg, proto = ev["config"], ev["protocol"]
        return {"checkpoint": a.checkpoint or cfg["checkpoint"], "env": ev["env"],
                "planner": cfg.get("planner") or {"name": "cem"}, "budget": proto["budget"],
                "goal_offset": proto["goal_offset"], "eval_seed": proto["eval_seed"],
                "policy": proto["policy"], "episode_len": proto["episode_len"],
                "horizon": cfg["horizon"], "receding_horizon": cfg["receding_horizon"],
                "episodes": min(a.episodes or ev["episodes"], ev["episodes"]),
                "per_episode": ev["per_episode"]}
    import dataclasses

    from worldmodel.config import group_options, preset

    d = {f.name: f.default for f in dataclasses.fields(CONFIG)}
    env_cfg = preset("env", a.env) if a.env in group_options("env") else {}
    return {"checkpoint": a.checkpoint, "env": a.env, "planner": planner_file("cem"),
            "budget": d["budget"], "goal_offset": d["goal_offset"], "eval_seed": d["eval_seed"],
            "policy": env_cfg.get("policy", "noise"), "episode_len": int(env_cfg.get("episode_len", 100)),
            "horizon": d["horizon"], "receding_horizon": d["receding_horizon"],
            "episodes": a.episodes or 50, "per_episode": None}


def run_oracle(env_list, tasks, energy, planner, p: dict, frameskip: int, desc: str) -> list[dict]:
    """`wm eval`'s episode loop with an MPCController whose observations are simulator states."""
    from tqdm import tqdm

    from worldmodel.planners.mpc import MPCController
    from worldmodel.evaluation.tasks import goal_images, plan_seed, run_tasks

    B = len(tasks)
    low, high = env_list[0].action_space.low, env_list[0].action_space.high
    ctrl = MPCController(planner, energy, (low, high), horizon=p["horizon"],
                         receding_horizon=p["receding_horizon"], frameskip=frameskip, history=1,
                         batch=B, dtype=torch.float64)
    ctrl.reset(np.stack([t.goal_state for t in tasks]), seed=plan_seed(tasks[0].seed, planner.seed))
    bar = tqdm(total=p["budget"], desc=f"{desc} oracle, {B} episodes in lockstep", unit="step")

    def act(obs: np.ndarray) -> np.ndarray:
        bar.update()
        return ctrl.act(np.stack([e.get_state() for e in env_list[:B]]))   # (B, S) states in
    try:
        return run_tasks(env_list, tasks, goal_images(env_list, tasks), act, p["budget"], record=False)
    finally:
        bar.close()


def summarise(results: list[dict], eval_per_episode: list[dict] | None, wall_s: float) -> dict:
    from worldmodel.evaluation.stats import wilson

    n, k = len(results), sum(r["success"] for r in results)
    out = {"successes": k, "episodes": n, "success_rate": k / n, "ci95": wilson(k, n),
           "closest_error_median": round(float(np.median([r["closest_error"] for r in results])), 3),
           "wall_s": round(wall_s, 1),
           "per_episode_success": [int(r["success"]) for r in results]}
    if eval_per_episode:
        model = [e["success"] for e in eval_per_episode]
        ours = [r["success"] for r in results]
        out["vs_model"] = {"both": sum(a and b for a, b in zip(ours, model)),
                           "oracle_only": sum(a and not b for a, b in zip(ours, model)),
                           "model_only": sum(b and not a for a, b in zip(ours, model)),
                           "neither": sum(not a and not b for a, b in zip(ours, model))}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--eval", help="a `wm eval` results.json: its tasks, protocol, planner, model")
    src.add_argument("--env", help="no eval: this env with the eval defaults (state cost only)")
    p.add_argument("--checkpoint", default=None, help="the model for --costs latent (default: the eval's)")
    p.add_argument("--costs", nargs="+", default=None, choices=["state", "latent"],
                   help="default: state and, with a model, latent")
    p.add_argument("--episodes", type=int, default=None, help="the first N tasks (default: all)")
    p.add_argument("--tasks", type=int, nargs="+", default=None,
                   help="only these task indices (e.g. the ones an earlier oracle run failed)")
    p.add_argument("--state-cost", default="max", choices=["max", "sumsq"],
                   help="state oracle energy: the success measure (max of the errors over their "
                        "tolerances) or the sum of their squares")
    p.add_argument("--planner", default=None, choices=["cem", "icem", "mppi"],
                   help="replace the eval's planner: configs/planner/<name>.yaml at the eval's CEM "
                        "compute (--budget-sequences, as benchmarks/planner_table.py)")
    p.add_argument("--budget-sequences", type=int, default=9000, help="with --planner: sequences per plan")
    p.add_argument("--samples", type=int, default=None, help="override the planner's samples")
    p.add_argument("--iterations", type=int, default=None, help="override the planner's iterations")
    p.add_argument("--frameskip", type=int, default=5, help="without a model: env steps per chunk")
    p.add_argument("--threads", type=int, default=None, help="MuJoCo rollout threads (default: all cores)")
    p.add_argument("--device", default="auto", help="where the model encodes (latent cost)")
    p.add_argument("--json", default=None, help="also write the JSON line here")
    a = p.parse_args(argv)

    from worldmodel.envs.sim_rollout import SimRollout
    from worldmodel.planners import planner_from_config
    from worldmodel.evaluation.tasks import make_env, make_tasks, training_seeds

    pr = protocol(a)
    costs = a.costs or (["state", "latent"] if pr["checkpoint"] else ["state"])
    model, meta, frameskip = None, {}, a.frameskip
    if pr["checkpoint"]:
        from worldmodel.machine import resolve_device
        from worldmodel.model.world_model import load_trained
        model, meta, _ = load_trained(pr["checkpoint"], resolve_device(a.device, 0), pr["env"])
        frameskip = model.cfg.frameskip
    elif "latent" in costs:
        raise SystemExit("--costs latent needs a model: pass --eval or --checkpoint")
    image_size = model.cfg.image_size if model is not None else 64
    overrides = {k: v for k, v in (("samples", a.samples), ("iterations", a.iterations)) if v}
    planner_cfg = dict(pr["planner"])
    if a.planner:             # another planner at the eval's compute, counted as planner_table.py does
        from benchmarks.planner_table import equal_compute
        planner_cfg = planner_file(a.planner)
        overrides = equal_compute(a.planner, a.budget_sequences)[0] | overrides
    planner_cfg |= overrides
    if "samples" in overrides and "elites" in planner_cfg:     # fewer samples: elites capped with them
        planner_cfg["elites"] = min(int(planner_cfg["elites"]), max(2, planner_cfg["samples"] // 10))
    pick = a.tasks or list(range(pr["episodes"]))
    if min(pick) < 0 or (pr["per_episode"] and max(pick) >= len(pr["per_episode"])):
        raise SystemExit(f"--tasks must index the eval's {len(pr['per_episode'] or [])} tasks, got {pick}")
    B = len(pick)
    env_list = [make_env(pr["env"], meta, image_size) for _ in range(B)]
    tasks = make_tasks(env_list[0], pr["policy"], pr["eval_seed"], max(pick) + 1, pr["episode_len"],
                       pr["goal_offset"], training_seeds(meta), pr.get("policy_kwargs"))   # the eval's tasks
    tasks = [tasks[i] for i in pick]
    if pr["per_episode"]:       # the pairing below is only meaningful on the very same tasks
        pr["per_episode"] = [pr["per_episode"][i] for i in pick]
        for t, e in zip(tasks, pr["per_episode"]):
            if (t.seed, t.start_step) != (e["seed"], e["start_step"]) or \
                    abs(env_list[0].goal_error(t.start_state, t.goal_state) - e["start_error"]) > 1e-3:
                raise SystemExit(f"task {t.index} differs from the eval's (seed {t.seed} step "
                                 f"{t.start_step} vs {e['seed']} {e['start_step']}): was the eval run "
                                 "with another env, policy or code version?")
    sim_env = make_env(pr["env"], meta, image_size)
    sim = SimRollout(sim_env, nthread=a.threads)
    row = {"bench": "oracle_ceiling", "env": pr["env"], "checkpoint": pr["checkpoint"],
           "eval_results": a.eval, "tasks": B, "task_indices": pick if a.tasks else None,
           "model_eval": (None if pr["per_episode"] is None else
                          {"successes": sum(e["success"] for e in pr["per_episode"]), "episodes": B}),
           "protocol": {k: pr[k] for k in ("budget", "goal_offset", "eval_seed", "policy", "episode_len",
                                           "horizon", "receding_horizon")} | {"frameskip": frameskip},
           "planner": planner_cfg, "planner_overridden": bool(overrides), "state_cost": a.state_cost,
           "sim_replay_max_deviation": sim.max_deviation, "threads": sim.nthread}
    for name in costs:
        cost = state_cost(sim_env, a.state_cost) if name == "state" else \
            latent_cost(model.eval(), make_env(pr["env"], meta, image_size))
        planner = planner_from_config(planner_cfg)
        t0 = time.perf_counter()
        res = run_oracle(env_list, tasks, SimEnergy(sim, frameskip, cost), planner, pr, frameskip, name)
        row[name] = summarise(res, pr["per_episode"], time.perf_counter() - t0)
        print(f"{name}: {row[name]['successes']}/{B}", file=sys.stderr)
    line = json.dumps(row)
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return row


if __name__ == "__main__":
    main()
