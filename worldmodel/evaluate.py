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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import math

import numpy as np
import torch

from worldmodel.config import check_output, save_resolved, to_dict
from worldmodel.dataset import write_json_atomic
from worldmodel.plots import EVAL_SUMMARY, plot_eval, safe_draw
from worldmodel.stats import mcnemar, percentile, wilson


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}   # eval precision= -> planning dtype


def valid_step_weights(weights: list[float], horizon: int) -> bool:
    """GoalEnergy's step_weights: one finite weight >= 0 per planned chunk, not all 0."""
    return len(weights) == horizon and all(math.isfinite(x) and x >= 0 for x in weights) and sum(weights) > 0


@dataclass
class EvalConfig:
    checkpoint: str = ""               # a best.pt / last.pt written by `wm train`
    env: str | None = None             # null: the env of the checkpoint's training data
    planner: dict = field(default_factory=dict)   # the planner group (configs/planner/<name>.yaml)
    episodes: int = 50
    budget: int = 50                   # env steps per episode
    goal_offset: int = 25              # goal = state this many steps after the start
    horizon: int = 5                   # planned action chunks
    receding_horizon: int = 5          # chunks executed before replanning (LeWM: the whole plan)
    step_weights: list[float] | None = None   # null: the energy is the last planned chunk's distance to
                                       # the goal (LeWM); one weight per chunk (horizon of them): the
                                       # weighted sum over all steps, e.g. [1,1,1,1,1]
    eval_seed: int = 1_000_003         # base seed of the held-out episodes (never a training seed)
    policy: str | None = None          # held-out episodes' policy; null: the training data's
    episode_len: int | None = None     # held-out episodes' length; null: the training data's
    batch: int = 50                    # episodes planned together
    time_budget_s: float | None = None # per-plan deadline (anytime planning); null: none
    cuda_graph: bool = False           # replay each solve as one captured CUDA graph (CUDA only)
    precision: str = "fp32"            # the predictor's dtype while planning: fp32 | bf16 (a bf16 copy:
                                       # faster on GPUs and on CPUs that multiply bf16 in hardware, slower
                                       # on others; on a CPU, wm eval says which this one is)
    compile: bool = False              # torch.compile the energy (compiled before the first episode)
    random_floor: bool = True          # also run uniform random actions on the same tasks
    videos: int = 50                   # episodes that get a video (observation | goal)
    device: str = "auto"
    out: str = "runs/eval"
    overwrite: bool = False
    resume: bool = False               # continue a killed eval after its finished batches (progress.json)
    progress: bool = True

    def __post_init__(self) -> None:
        from worldmodel.checkpoint import require_checkpoint

        require_checkpoint(self.checkpoint, "eval")
        if self.resume and self.overwrite:
            raise ValueError("pass only one of resume=true (continue) / overwrite=true (start over)")
        for k in ("episodes", "budget", "goal_offset", "horizon", "receding_horizon", "batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.receding_horizon > self.horizon:
            raise ValueError(f"receding_horizon ({self.receding_horizon}) must be <= horizon ({self.horizon})")
        if self.step_weights is not None:
            w = self.step_weights
            if not valid_step_weights(w, self.horizon):
                raise ValueError(f"step_weights={w}: one finite weight >= 0 per planned chunk, {self.horizon} "
                                 f"of them (horizon={self.horizon}), not all 0; e.g. "
                                 f"step_weights=[{','.join(['1'] * self.horizon)}], or null for the last chunk only")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds (or null: no deadline), got {self.time_budget_s}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.planner:
            from planners import planner_from_config

            planner_from_config(self.planner)       # an unknown planner, key or value is refused here


CONFIG, CONFIG_NAME = EvalConfig, "eval"
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


@dataclass
class Task:
    index: int
    seed: int                 # held-out episode seed
    start_step: int
    start_state: np.ndarray   # (S,)
    goal_state: np.ndarray    # (S,)


def training_seeds(meta: dict[str, Any]) -> set[int]:
    """The episode seeds a dataset was collected with (from its meta.json): never a held-out task."""
    from worldmodel.collect import episode_seed

    if "seed" not in meta:
        return set()
    return {episode_seed(int(meta["seed"]), i) for i in range(int(meta.get("episodes", 0)))}


def plan_seed(task_seed: int, planner_seed: int) -> int:
    """The planner's seed for a batch of tasks, from its first task's seed and the configured
    `planner.seed`: the task seed itself for planner seed 0 (every eval recorded so far), a mix of
    the two otherwise, so `planner.seed=1` draws other samples on the same tasks."""
    if planner_seed == 0:
        return int(task_seed)
    mixed = np.random.SeedSequence([int(task_seed), int(planner_seed)]).generate_state(1, np.uint64)[0]
    return int(mixed >> 1)                             # < 2**63: a valid torch seed


def make_tasks(env, policy: str, eval_seed: int, episodes: int, episode_len: int, goal_offset: int,
               forbidden_seeds: set[int]) -> list[Task]:
    """Roll out one held-out episode per task and pick (start, start + goal_offset) from it."""
    from worldmodel.collect import episode_seed, rollout

    if episode_len <= goal_offset:
        raise ValueError(f"episode_len ({episode_len}) must exceed goal_offset ({goal_offset})")
    tasks = []
    for i in range(episodes):
        seed = episode_seed(eval_seed, i)
        if seed in forbidden_seeds:
            raise ValueError(f"held-out seed {seed} (eval_seed={eval_seed}, episode {i}) was used for "
                             "training; pick another eval_seed")
        ep = rollout(env, policy, eval_seed, i, episode_len)
        n = len(ep["state"])
        if n <= goal_offset:
            why = " (its physics diverged under the data policy)" if ep.get("diverged") else ""
            raise ValueError(f"held-out episode {i} ended after {n} rows{why}, shorter than goal_offset")
        rng = np.random.default_rng([seed, 7])
        # A window whose start already meets the goal (the data policy idled) is no task: any
        # policy "solves" it. Redraw the start among the windows that are not solved at step 0.
        open_starts = [s for s in range(n - goal_offset)
                       if not env.is_success(ep["state"][s], ep["state"][s + goal_offset])]
        if not open_starts:
            widest = max(env.goal_error(ep["state"][s], ep["state"][s + goal_offset])
                         for s in range(n - goal_offset))
            raise ValueError(f"held-out episode {i} (seed {seed}) never moves far enough in "
                             f"{goal_offset} steps to make a task: its widest start-to-goal gap is "
                             f"{widest:.2f} x the success tolerance (a task needs > 1). Use a larger "
                             "goal_offset=, another policy=, or a tighter success tolerance in the "
                             "data's env.kwargs (the generic adapters': collect with +env.kwargs.success_threshold=...)")
        s = int(rng.integers(0, n - goal_offset))
        while s not in open_starts:
            s = int(rng.integers(0, n - goal_offset))
        tasks.append(Task(i, seed, s, ep["state"][s].copy(), ep["state"][s + goal_offset].copy()))
    return tasks


def goal_images(env_list: list, tasks: list[Task]) -> np.ndarray:
    """(B, H, W, 3) goal images of a batch of tasks, rendered by the observation camera, each in
    its own episode: the env is reset to the task first (left at its start state), since what a
    reset draws outside the state (a target marker, a terrain) is in the picture too."""
    for i, t in enumerate(tasks):
        env_list[i].reset(seed=t.seed, options={"state": t.start_state})
    return np.stack([env_list[i].goal_image(t.goal_state) for i, t in enumerate(tasks)])


def run_tasks(env_list: list, tasks: list[Task], goals: np.ndarray, act: Callable[[np.ndarray], np.ndarray],
              budget: int, record: bool) -> list[dict[str, Any]]:
    """Run len(tasks) <= len(env_list) episodes in lockstep with a batched policy `act`. An episode
    whose physics diverges ends there (`diverged_at`: that step), with what it reached so far."""
    from envs import SimulationDiverged

    B = len(tasks)
    obs = np.stack([env_list[i].reset(seed=t.seed, options={"state": t.start_state})[0]
                    for i, t in enumerate(tasks)])                         # (B, H, W, 3)
    first, diverged = [None] * B, [None] * B
    start = [env_list[i].goal_error(t.start_state, t.goal_state) for i, t in enumerate(tasks)]
    closest, last = list(start), list(start)
    frames: list[list[np.ndarray]] = [[o] for o in obs] if record else [[] for _ in range(B)]
    for step in range(1, budget + 1):
        actions = act(obs)                                                 # (B, A)
        obs = obs.copy()          # a new array per step: the policy and the video keep the frames they saw
        for i, env in enumerate(env_list[:B]):
            if diverged[i] is not None:
                continue
            try:
                o, _, _, _, info = env.step(actions[i])
            except SimulationDiverged:
                diverged[i] = step
                continue
            obs[i] = o
            last[i] = env.goal_error(info["state"], tasks[i].goal_state)
            closest[i] = min(closest[i], last[i])
            if first[i] is None and env.is_success(info["state"], tasks[i].goal_state):
                first[i] = step
            if record:
                frames[i].append(o)
    return [{"success": f is not None, "steps_to_success": f, "frames": frames[i], "goal": goals[i],
             "start_error": start[i], "closest_error": closest[i], "final_error": last[i],
             "diverged_at": diverged[i]} for i, f in enumerate(first)]


def goal_error_summary(results: list[dict[str, Any]], floor: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the goal error (x the success tolerance) over the episodes: at the start, closest,
    at the end; the closest among failures alone; and the random policy's closest on the same tasks."""
    def med(rs: list[dict[str, Any]], key: str) -> float | None:
        return round(float(np.median([r[key] for r in rs])), 3) if rs else None
    return {"start": med(results, "start_error"), "closest": med(results, "closest_error"),
            "final": med(results, "final_error"),
            "closest_failures": med([r for r in results if not r["success"]], "closest_error"),
            "random_closest": med(floor, "closest_error"),
            "note": "medians of the env's goal_error: its success criterion as a multiple of the "
                    "tolerance (< 1 = success)"}


def _video(path: Path, frames: list[np.ndarray], goal: np.ndarray, success_step: int | None,
           title: str, fps: int) -> str:
    from worldmodel.video import label, side_by_side, upscale, write_video

    size = 192
    g = label(upscale(goal, size), "goal")
    out = []
    for t, f in enumerate(frames):
        done = success_step is not None and t >= success_step
        tag = f"{title} t={t}" + ("  SUCCESS" if done else "")
        out.append(side_by_side([label(upscale(f, size), tag, (120, 255, 120) if done else (255, 255, 255)), g]))
    return str(write_video(path, out, fps=fps))


def paired_vs_random(planner: list[bool], random: list[bool]) -> dict[str, Any]:
    """`mcnemar` of the planner against the random floor, as results.json records it."""
    b, c, p = mcnemar(planner, random)
    return {"planner_only": b, "random_only": c, "p_value": p}


def make_env(env_name: str, meta: dict[str, Any], image_size: int):
    """The env to evaluate in: the training data's env (under any of its names) built with the
    kwargs it was collected with (a generic adapter's suite task, success dims and tolerance, ...);
    another env that `env=` names gets its own defaults."""
    import envs

    return envs.make(env_name, image_size=image_size, **env_kwargs(env_name, meta))


def env_kwargs(env_name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The constructor kwargs `make_env` passes (besides image_size): the data's, when `env_name`
    is the data's env (`same_env`), less those the name itself sets (a dm_control task's domain)."""
    import envs

    if not same_env(env_name, meta):
        return {}
    try:
        _, extra = envs.resolve(env_name)
    except ValueError:                     # an env of a plugin not loaded: no name-set kwargs
        extra = {}
    return {k: v for k, v in (meta.get("env_kwargs") or {}).items() if k not in extra}


def same_env(name: str, meta: dict[str, Any]) -> bool:
    """Whether env `name` is the env the training data came from (by identity, not spelling:
    "tworoom" and "wm/TwoRoom-v0", or a dm_control task and the "dmc" data collected from it)."""
    import envs

    trained = meta.get("env")
    if not trained:
        return True
    try:
        short, extra = envs.resolve(name)
        t_short, t_extra = envs.resolve(trained)
    except ValueError:                     # an env of a plugin not loaded: fall back to the names
        return name == trained
    kw = meta.get("env_kwargs") or {}
    t_extra = {**t_extra, **{k: kw[k] for k in extra if k in kw}}
    return (short, extra) == (t_short, t_extra)


def run(cfg: EvalConfig) -> dict[str, Any]:
    from planners import planner_from_config
    from worldmodel.distributed import print_precision_note, resolve_device
    from planners.mpc import MPCController
    from worldmodel.energy import GoalEnergy
    from worldmodel.model import load_trained

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
    energy = GoalEnergy(model, static=cfg.cuda_graph, dtype=PRECISIONS[cfg.precision], compile=cfg.compile,
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
