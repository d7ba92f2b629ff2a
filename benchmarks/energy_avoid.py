"""A constraint energy that changes the path: TwoRoom, keep out of the left room's south-west corner.

The agent starts near the corner's north side and its goal lies near its east side, so the straight
path cuts the corner. Frames of the agent at a grid of positions inside the corner (rendered by the
env, as a robot would photograph the place to avoid) become an `Avoid` term added to the goal energy;
the same task is planned with and without it (same planner seed), and the two paths are drawn over
the arena.

    python -m benchmarks.energy_avoid --checkpoint runs/demo/train/best.pt \
        --out benchmarks/results/energy_avoid_tworoom_demo.png

stdout: one JSON line (each run's success, steps inside the corner, closest approach to the goal);
--json also appends it to a file.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks.recipes import emit_line

CORNER = (-1.0, -0.4)           # the forbidden square: x and y both in this range (metres)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a TwoRoom best.pt written by `wm train`")
    p.add_argument("--start", type=float, nargs=2, default=[-0.85, -0.2], help="agent start x y (m)")
    p.add_argument("--goal", type=float, nargs=2, default=[-0.2, -0.85], help="goal x y (m)")
    p.add_argument("--weight", type=float, default=100.0, help="the Avoid term's weight")
    p.add_argument("--radius", type=float, default=1.0, help="the Avoid term's radius (latent units per dim)")
    p.add_argument("--planner", default="icem_cpu", help="a configs/planner/<name>.yaml preset")
    p.add_argument("--budget", type=int, default=50, help="env steps")
    p.add_argument("--seed", type=int, default=0, help="planner seed")
    p.add_argument("--out", default=None, help="draw both paths into this PNG")
    p.add_argument("--json", default=None, help="also append the JSON line to this file")
    return p.parse_args(argv)


def corner_frames(env: Any, info_state: np.ndarray, n: int = 4) -> np.ndarray:
    """(n*n, H, W, 3) frames of the agent at a grid of positions inside the corner."""
    lo, hi = CORNER
    grid = np.linspace(lo + 0.1, hi - 0.05, n)
    frames = []
    for x in grid:
        for y in grid:
            s = info_state.copy()
            s[:2], s[2:] = (x, y), 0.0
            frames.append(env.goal_image(s))
    return np.stack(frames)


def inside(xy: np.ndarray) -> np.ndarray:
    lo, hi = CORNER
    return ((xy >= lo) & (xy <= hi)).all(-1)


def run(env: Any, model: Any, planner: Any, terms: list, start: np.ndarray, goal_state: np.ndarray,
        budget: int, seed: int) -> dict[str, Any]:
    from worldmodel.model.energy import GoalEnergy
    from worldmodel.planners import MPCController

    energy = GoalEnergy(model, step_weights=[1.0] * 5, terms=terms)
    ctrl = MPCController(planner, energy, (env.action_space.low, env.action_space.high), horizon=5,
                         receding_horizon=1, frameskip=model.cfg.frameskip, history=model.cfg.history)
    obs, info = env.reset(seed=0, options={"state": start})
    ctrl.reset(env.goal_image(goal_state), seed=seed)
    path, done = [info["state"][:2].copy()], None
    for t in range(budget):
        obs, _, _, _, info = env.step(ctrl.act(obs))
        path.append(info["state"][:2].copy())
        if done is None and env.is_success(info["state"], goal_state):
            done = t + 1
            break
    xy = np.array(path)
    return {"success": done is not None, "steps": done, "steps_in_corner": int(inside(xy).sum()),
            "closest_m": float(np.linalg.norm(xy - goal_state[:2], axis=1).min()), "path": xy.round(3).tolist()}


def draw(env: Any, state: np.ndarray, runs: dict[str, dict], goal: np.ndarray, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    s = state.copy()
    s[:2] = 5.0                                              # the agent out of view: the arena alone
    ax.imshow(env.goal_image(s), extent=(-1.1, 1.1, -1.1, 1.1), origin="upper")
    lo, hi = CORNER
    ax.add_patch(Rectangle((lo, lo), hi - lo, hi - lo, color="red", alpha=0.25, label="kept out (Avoid)"))
    for (name, r), c in zip(runs.items(), ("tab:blue", "tab:orange")):
        xy = np.array(r["path"])
        ax.plot(xy[:, 0], xy[:, 1], "-o", ms=2, color=c, label=f"{name}: {r['steps_in_corner']} steps inside")
    ax.plot(*goal, "*", color="green", ms=14, label="goal")
    ax.set_xlim(-1.1, 1.1)
    ax.set_ylim(-1.1, 1.1)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("TwoRoom: the goal energy with and without an Avoid term", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    from worldmodel import envs
    from worldmodel.config import preset
    from worldmodel.model.energy_terms import Avoid
    from worldmodel.model.world_model import load_trained
    from worldmodel.planners import planner_from_config

    model, meta, env_name = load_trained(a.checkpoint, "cpu")
    if env_name != "tworoom":
        raise SystemExit(f"energy_avoid: a TwoRoom checkpoint is needed, {a.checkpoint} is {env_name}")
    env = envs.make("tworoom", image_size=model.cfg.image_size)
    _, info = env.reset(seed=0)
    start, goal_state = info["state"].copy(), info["state"].copy()
    start[:2], start[2:] = a.start, 0.0
    goal_state[:2], goal_state[2:] = a.goal, 0.0
    avoid = Avoid(images=corner_frames(env, start), weight=a.weight, radius=a.radius)
    runs = {}
    for name, terms in (("goal distance", []), ("goal distance + Avoid(corner)", [avoid])):
        planner = planner_from_config(preset("planner", a.planner), seed=a.seed)
        runs[name] = run(env, model, planner, terms, start, goal_state, a.budget, a.seed)
    if a.out:
        draw(env, start, runs, np.array(a.goal), a.out)
    out = {"bench": "energy_avoid", "checkpoint": a.checkpoint, "planner": a.planner, "start": a.start,
           "goal": a.goal, "corner": CORNER, "weight": a.weight, "radius": a.radius, "runs": runs,
           "picture": a.out, "date": time.strftime("%Y-%m-%d")}
    emit_line(out, a.json)
    return out


if __name__ == "__main__":
    main()
