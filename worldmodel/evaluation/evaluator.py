"""`wm eval`: zero-shot goal reaching under the LeWM protocol, batched over episodes.

    wm eval checkpoint=runs/tworoom/best.pt planner=cem episodes=50 out=runs/tworoom/eval

Protocol (REFERENCE.md): held-out episodes are rolled out with the training data's policy but with
seeds never used for training; each evaluation episode starts at a random step of one of them, its
goal is the state `goal_offset` (25) steps later (a start that already meets its goal, where the
data policy idled, is redrawn: any policy would "solve" it), the planner gets `budget` (50) env steps, and the
episode succeeds if the env's criterion holds at any step. The planner sees only pixels: the start
frame, the goal image, and what the env renders after each action. Simulator state is used only to
set up the start and to score. The random-policy floor runs on the very same starts and goals.
Besides success, each episode records how close it came: the env's `goal_error` (its criterion as a
multiple of the tolerance, < 1 = success) at the start, at the closest step and at the end, so a
failure that missed by a hair reads differently from one that went nowhere. results.json holds it
all; summary.png draws it (success vs the random floor, every episode's closest approach).

All episodes of a batch step in lockstep and are planned together: one batched solve plans for
every episode at once (B envs x S samples), instead of one episode at a time.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any


import numpy as np
import torch

from worldmodel.config import to_dict
from worldmodel.evaluation.config import EvalConfig
from worldmodel.io import check_output, save_resolved, write_json_atomic
from worldmodel.report.plots import EVAL_SUMMARY, plot_eval, safe_draw
from worldmodel.evaluation.stats import percentile, wilson
from worldmodel.evaluation.tasks import (env_kwargs, goal_error_summary, goal_images, make_env, make_tasks,
                                        paired_vs_random, plan_seed, run_tasks, same_env, training_seeds)




# what precision=bf16 gave where it pays, for precision_note (README: bf16 planning)
EVAL_BF16_GAIN = ("a LeWM-scale CEM solve 2.5-3x faster on a 2-core AMD EPYC, 4.5x with compile=true; "
                  "108 vs 108 of 150 demo tasks solved")
PROGRESS = "progress.json"      # an eval in progress: its finished batches (resume=true continues after them)
OUTPUTS = {"config.json", "results.json", EVAL_SUMMARY, "videos", PROGRESS}   # what an eval writes in out=


def fingerprint(cfg: EvalConfig, device: torch.device) -> dict[str, str]:
    """What else decides an eval's numbers beside its settings: the checkpoint's bytes (its path may
    hold another model by now) and the device the settings resolved to."""
    h = hashlib.sha256()
    with open(cfg.checkpoint, "rb") as f:              # type: ignore[arg-type]
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"checkpoint_sha256": h.hexdigest(), "device": str(device)}


def load_progress(out: Path, cfg: EvalConfig, fp: dict[str, str]) -> dict[str, Any] | None:
    """resume=true: the finished batches of the eval killed in `out`, refused if it ran other settings,
    another checkpoint (same path, other bytes) or on another device."""
    f = out / PROGRESS
    if not f.is_file():
        return None
    saved = json.loads(f.read_text())
    now = to_dict(cfg)
    diff = {k: (saved["config"].get(k), v) for k, v in now.items()
            if k not in ("resume", "overwrite", "progress") and saved["config"].get(k) != v}
    diff.update({k: (saved.get("fingerprint", {}).get(k), v) for k, v in fp.items()
                 if saved.get("fingerprint", {}).get(k) != v})
    if diff:
        raise ValueError(f"resume=true but {f} was written with other settings (then vs now: {diff}); resume "
                         "with its settings, or overwrite=true to start over")
    return saved


def _video(path: Path, frames: list[np.ndarray], goal: np.ndarray, success_step: int | None,
           title: str, fps: int) -> str:
    from worldmodel.report.video import label, side_by_side, upscale, write_video

    size = 192
    g = label(upscale(goal, size), "goal")
    out = []
    for t, f in enumerate(frames):
        done = success_step is not None and t >= success_step
        tag = f"{title} t={t}" + ("  SUCCESS" if done else "")
        out.append(side_by_side([label(upscale(f, size), tag, (120, 255, 120) if done else (255, 255, 255)), g]))
    return str(write_video(path, out, fps=fps))


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    from worldmodel.planners import planner_from_config
    from worldmodel.machine import print_precision_note, resolve_device
    from worldmodel.planners.mpc import MPCController
    from worldmodel.model.energy import DTYPES, GoalEnergy
    from worldmodel.model.world_model import load_trained

    out = Path(cfg.out)
    device = resolve_device(cfg.device, 0)
    run_fp = fingerprint(cfg, device)
    progress = load_progress(out, cfg, run_fp) if cfg.resume else None
    replace = progress is None and check_output(out, cfg.overwrite, OUTPUTS, "eval")
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=true needs a CUDA device, and device={cfg.device} resolves to {device}; "
                         "drop cuda_graph=true on the CPU")

    # Everything that can be refused is checked before any rollout.
    model, meta, env_name = load_trained(cfg.checkpoint, device, cfg.env)
    if not same_env(env_name, meta):       # allowed (a variant of the env, a transfer test), but say so
        print(f"wm eval: warning: {cfg.checkpoint} was trained on {meta['env']} data and is evaluated in "
              f"{env_name}; the tasks still use that data's policy and episode length unless policy= "
              f"and episode_len= are given", file=sys.stderr)
    print_precision_note("wm eval", cfg.precision, device, EVAL_BF16_GAIN)
    policy = cfg.policy or meta.get("policy") or "noise"
    episode_len = cfg.episode_len or int(meta.get("episode_len") or 100)
    mcfg = model.cfg
    planner_cfg = cfg.planner or {"name": "cem"}
    planner_name = planner_cfg["name"]
    planner = planner_from_config(planner_cfg)
    planner_seed = planner.seed                # the configured one: each batch reseeds from it and its tasks
    B = min(cfg.batch, cfg.episodes)
    env_list = [make_env(env_name, meta, mcfg.image_size) for _ in range(B)]
    low, high = env_list[0].action_space.low, env_list[0].action_space.high
    if len(low) != mcfg.action_dim:
        raise ValueError(f"env {env_name} has {len(low)} action dims; the model was trained on {mcfg.action_dim}")
    t0 = time.perf_counter()
    tasks = make_tasks(env_list[0], policy, cfg.eval_seed, cfg.episodes, episode_len, cfg.goal_offset,
                       training_seeds(meta))
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)      # after the last refusal: a refused eval leaves no out
    save_resolved(cfg, out)
    energy = GoalEnergy(model, static=cfg.cuda_graph, dtype=DTYPES[cfg.precision], compile=cfg.compile,
                        step_weights=cfg.step_weights)
    done = progress["done"] if progress else 0                          # tasks finished before a kill
    results: list[dict[str, Any]] = progress["results"] if progress else []
    floor: list[dict[str, Any]] = progress["floor"] if progress else []
    latencies: list[float] = progress["latencies"] if progress else []
    videos: list[str] = progress["videos"] if progress else []
    misses = progress["misses"] if progress else 0
    if progress:
        print(f"wm eval: resuming after {done} of {len(tasks)} episodes ({out / PROGRESS})")
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=len(tasks), initial=done, desc="eval episodes", unit="ep")
    for b0 in range(done, len(tasks), B):
        batch = tasks[b0:b0 + B]
        ctrl = MPCController(planner, energy, (low, high), horizon=cfg.horizon,
                             receding_horizon=cfg.receding_horizon, frameskip=mcfg.frameskip,
                             history=mcfg.history, batch=len(batch), time_budget_s=cfg.time_budget_s,
                             device=device, cuda_graph=cfg.cuda_graph)
        record = b0 < cfg.videos
        goals = goal_images(env_list, batch)                               # (b, H, W, 3)
        ctrl.reset(goals, seed=plan_seed(batch[0].seed, planner_seed))
        if cfg.cuda_graph:
            ctrl.warmup(2)          # capture every graph outside the timed plans
        elif cfg.compile and (b0 == done or len(batch) != B):
            ctrl.warmup(1)          # compile every shape (history length, batch) outside them
        res = run_tasks(env_list, batch, goals, ctrl.act, cfg.budget, record)
        latencies += ctrl.latencies_s
        misses += int(ctrl.stats()["deadline_misses"])
        results += res
        if cfg.random_floor:
            rng = np.random.default_rng([cfg.eval_seed, b0, 99])
            rand = run_tasks(env_list, batch, goals,
                             lambda o: rng.uniform(low, high, (len(o), len(low))).astype(np.float32),
                             cfg.budget, False)
            floor += [{k: v for k, v in r.items() if k not in ("frames", "goal")} for r in rand]
        for t, r in zip(batch, res):            # videos now, so only numbers are kept (and resumed)
            frames, goal = r.pop("frames"), r.pop("goal")
            if t.index < cfg.videos and frames:
                videos.append(_video(out / "videos" / f"episode_{t.index:03d}.mp4", frames, goal,
                                     r["steps_to_success"], f"ep {t.index}", fps=10))
        write_json_atomic(out / PROGRESS, {"config": to_dict(cfg), "fingerprint": run_fp,
                                           "done": b0 + len(batch), "results": results,
                                           "floor": floor, "latencies": latencies, "misses": misses,
                                           "videos": videos})
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.0%}")
    if bar is not None:
        bar.close()

    n = len(results)
    k = sum(r["success"] for r in results)
    kf = sum(r["success"] for r in floor)
    steps = [r["steps_to_success"] for r in results if r["success"]]
    summary = {
        "env": env_name, "trained_env": meta.get("env"), "checkpoint": str(cfg.checkpoint),
        "planner": planner_name,
        "episodes": n, "successes": k, "success_rate": k / n, "ci95": wilson(k, n),
        "random_floor": ({"successes": kf, "success_rate": kf / n, "ci95": wilson(kf, n),
                          "paired": paired_vs_random([r["success"] for r in results],
                                                     [r["success"] for r in floor])} if floor else None),
        "steps_to_success": {"median": percentile(steps, 50), "mean": float(np.mean(steps)) if steps else None},
        "goal_error": goal_error_summary(results, floor),
        "latency_ms": {"p50": percentile([x * 1e3 for x in latencies], 50),
                       "p95": percentile([x * 1e3 for x in latencies], 95),
                       "max": max(latencies) * 1e3 if latencies else None, "plans": len(latencies),
                       "batch": B, "note": "one plan = one batched solve for all episodes of a batch"},
        "deadline_misses": misses, "device": str(device), "precision": cfg.precision,
        "diverged": {"planner": sum(r["diverged_at"] is not None for r in results),
                     "random": sum(r["diverged_at"] is not None for r in floor),
                     "note": "episodes whose physics diverged; each ended there, with what it had reached"},
        "protocol": {"budget": cfg.budget, "goal_offset": cfg.goal_offset, "eval_seed": cfg.eval_seed,
                     "policy": policy, "episode_len": episode_len, "env_kwargs": env_kwargs(env_name, meta)},
        "wall_s": time.perf_counter() - t0, "resumed_after": done,   # resumed: wall_s counts this run only
        "per_episode": [{"index": t.index, "seed": t.seed, "start_step": t.start_step,
                         "success": r["success"], "steps_to_success": r["steps_to_success"],
                         "diverged_at": r["diverged_at"],
                         **{k: round(r[k], 4) for k in ("start_error", "closest_error", "final_error")},
                         "random_success": (floor[i]["success"] if floor else None),
                         "random_closest_error": (round(floor[i]["closest_error"], 4) if floor else None)}
                        for i, (t, r) in enumerate(zip(tasks, results))],
        "videos": videos, "config": to_dict(cfg),
    }
    write_json_atomic(out / "results.json", summary)
    (out / PROGRESS).unlink()
    safe_draw(plot_eval, summary, out / EVAL_SUMMARY)
    lo, hi = summary["ci95"]
    line = f"{env_name}: success {k}/{n} = {k / n:.0%} (95% CI {lo:.0%}-{hi:.0%})"
    if floor:
        pr = summary["random_floor"]["paired"]
        line += (f"; random floor {kf}/{n} = {kf / n:.0%} (same tasks: planner-only {pr['planner_only']}, "
                 f"random-only {pr['random_only']}, McNemar p = {pr['p_value']:.2g})")
    ge = summary["goal_error"]
    if ge["closest_failures"] is not None:
        line += (f"; failures came within {ge['closest_failures']:.1f}x the tolerance (median; start "
                 f"{ge['start']:.1f}x" + (f", random {ge['random_closest']:.1f}x" if floor else "") + ")")
    dv = summary["diverged"]
    if dv["planner"] or dv["random"]:
        line += f"; the physics diverged in {dv['planner']} planner and {dv['random']} random episodes"
    print(line + f"; results in {out / 'results.json'}, picture in {out / EVAL_SUMMARY}")
    return summary
