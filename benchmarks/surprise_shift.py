"""How soon the surprise monitor fires when the world leaves what the model knows, and how often it
fires when it does not.

`wm eval`'s held-out tasks (fresh episodes of the training data's policy) are run in lockstep by an
MPCController whose energy is a SurpriseMonitor (reference: the held-out one-step errors `wm distill`
stored with the policy). From env step `--shift-at` on, the world changes in one way the model never
saw: the camera image's colours (`colour`: channels swapped), its lighting (`dark`: x 0.6), the
camera moved (`camera`: the view shifted 4 px), an obstacle in view (`occluder`: a grey square), or
the physics (`heavy`: every body 5x heavier, a MuJoCo env). `none` changes nothing: the monitor's
false-alarm rate on the training distribution. Planning uses the distilled policy (planner=policy,
one forward pass per decision) unless --planner names another preset.

    python -m benchmarks.surprise_shift --checkpoint runs/demo/train/best.pt \
        --distilled runs/distill/tworoom/policy.pt --shift none colour dark camera occluder heavy

stdout: one JSON line per shift (episodes alarmed before and after the shift, env steps from the
shift to the first alarm, per-check false-alarm rate); --json also appends them to a file.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

from benchmarks.recipes import emit_line

SHIFTS = ("none", "colour", "dark", "camera", "occluder", "heavy")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt written by `wm train`")
    p.add_argument("--distilled", required=True, help="its policy.pt (`wm distill`): the reference, and the planner")
    p.add_argument("--shift", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    p.add_argument("--shift-at", type=int, default=20, help="env step from which the world is changed")
    p.add_argument("--threshold", type=float, default=4.0, help="alarm above this score (held-out stds of log error)")
    p.add_argument("--planner", default="policy", help="a configs/planner/<name>.yaml preset")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--budget", type=int, default=50)
    p.add_argument("--goal-offset", type=int, default=25)
    p.add_argument("--eval-seed", type=int, default=1_000_003)
    p.add_argument("--json", default=None, help="also append the JSON lines to this file")
    return p.parse_args(argv)


def image_shift(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """A change of the camera image (B, H, W, 3) uint8 -> uint8 (identity for physics shifts)."""
    def colour(x):
        return x[..., ::-1].copy()

    def dark(x):
        return (x.astype(np.float32) * 0.6).astype(np.uint8)

    def camera(x):
        return np.pad(x, ((0, 0), (4, 0), (4, 0), (0, 0)), mode="edge")[:, :x.shape[1], :x.shape[2]]

    def occluder(x):
        y, s = x.copy(), x.shape[1] // 4
        y[:, s:2 * s, s:2 * s] = 128
        return y
    return {"colour": colour, "dark": dark, "camera": camera, "occluder": occluder}.get(name, lambda x: x)


def heavier(env_list: list, factor: float) -> None:
    """Every body of each env's MuJoCo model `factor` x heavier (the world body excepted)."""
    for env in env_list:
        model = getattr(env, "model", None)
        if model is None or not hasattr(model, "body_mass"):
            raise SystemExit("surprise_shift: --shift heavy needs a MuJoCo env (env.model.body_mass)")
        model.body_mass[1:] *= factor


def run_shift(shift: str, a: argparse.Namespace, model: Any, meta: dict, env_name: str, tasks: list, policy: Any,
              reference: dict) -> dict[str, Any]:
    from worldmodel.config import preset
    from worldmodel.evaluation.tasks import goal_images, make_env, run_tasks
    from worldmodel.model.energy import GoalEnergy
    from worldmodel.planners import MPCController, SurpriseMonitor, planner_from_config

    env_list = [make_env(env_name, meta, model.cfg.image_size) for _ in tasks]
    goals = goal_images(env_list, tasks)                                   # (B, H, W, 3) before any change
    clock = {"step": 0}                                                    # the observation's env step
    alarms: list[tuple[int, int]] = []                                     # (env step, batch row)

    def note(event) -> None:
        alarms.extend((clock["step"], r) for r in event.rows.tolist())
    energy = SurpriseMonitor(GoalEnergy(model, policy=policy), reference, threshold=a.threshold, on_surprise=note)
    space = env_list[0].action_space
    ctrl = MPCController(planner_from_config(preset("planner", a.planner)), energy, (space.low, space.high),
                         horizon=5, receding_horizon=1, frameskip=model.cfg.frameskip, history=model.cfg.history,
                         batch=len(tasks))
    ctrl.reset(goals, seed=0)
    change = image_shift(shift)

    def act(obs: np.ndarray) -> np.ndarray:
        step = clock["step"]
        if shift == "heavy" and step == a.shift_at:
            heavier(env_list, 5.0)
        action = ctrl.act(change(obs) if step >= a.shift_at else obs)
        clock["step"] = step + 1
        return action
    res = run_tasks(env_list, tasks, goals, act, a.budget, False)
    at = a.shift_at if shift != "none" else a.budget                      # none: every check is in distribution
    before = [(s, r) for s, r in alarms if s < at]
    after: dict[int, int] = {}
    for s, r in sorted(alarms):
        if s >= at:
            after.setdefault(r, s)
    delay = [s - at for s in after.values()]
    fs, first = model.cfg.frameskip, model.cfg.frameskip * (model.cfg.history - 1)   # checks: once the history is full
    checks_before = len([s for s in range(first, at) if s % fs == 0]) * len(tasks)
    scores = np.array(energy.scores)                                        # (checks, B): check j at step first + j*fs
    steps = first + np.arange(len(scores)) * fs
    pre, post = scores[steps < at], scores[steps >= at]
    return {"bench": "surprise_shift", "checkpoint": a.checkpoint, "env": env_name, "shift": shift,
            "shift_at": a.shift_at if shift != "none" else None, "threshold": a.threshold, "planner": a.planner,
            "episodes": len(tasks), "successes": sum(r["success"] for r in res),
            "episodes_alarmed_before_shift": len({r for _, r in before}),
            "false_alarms_per_check_before_shift": len(before) / max(checks_before, 1),
            "episodes_alarmed_after_shift": len(after),
            "steps_to_first_alarm_median": float(np.median(delay)) if delay else None,
            "steps_to_first_alarm_p90": float(np.percentile(delay, 90)) if delay else None,
            "score_p50_before": float(np.median(pre)) if pre.size else None,
            "score_p99_before": float(np.percentile(pre, 99)) if pre.size else None,
            "score_max_after_median": float(np.median(post.max(0))) if post.size else None,
            "reference_n": reference["n"], "date": time.strftime("%Y-%m-%d")}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    a = parse(argv)
    if not a.threshold > 0:
        raise SystemExit(f"surprise_shift: --threshold must be > 0, got {a.threshold}; e.g. --threshold 4")
    from worldmodel.evaluation.tasks import default_heldout_tasks, make_env
    from worldmodel.model.goal_policy import load_policy, surprise_reference_of
    from worldmodel.model.world_model import load_trained

    model, meta, env_name = load_trained(a.checkpoint, "cpu")
    policy, reference = load_policy(a.distilled, model), surprise_reference_of(a.distilled, model)
    env = make_env(env_name, meta, model.cfg.image_size)
    tasks = default_heldout_tasks(env, meta, a.eval_seed, a.episodes, a.goal_offset)
    rows = []
    for shift in a.shift:
        row = run_shift(shift, a, model, meta, env_name, tasks, policy, reference)
        rows.append(row)
        emit_line(row, a.json)
    return rows


if __name__ == "__main__":
    main()
