"""`wm eval`: zero-shot goal reaching in a simulator, batched over episodes.

The tasks follow `tasks.py`'s protocol. The episodes of a batch step in lockstep, one batched solve
planning for all of them (B envs x S samples); the random floor runs on the very same tasks. Each
finished batch is kept in progress.json (resume=true continues after it); the end writes
results.json, summary.png and a video per recorded episode.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.config import to_dict
from worldmodel.evaluation.config import EvalConfig
from worldmodel.evaluation.stats import percentile, wilson
from worldmodel.evaluation.tasks import (Task, env_kwargs, goal_error_summary, goal_images, heldout_policy, make_env,
                                         make_tasks, paired_vs_random, plan_seed, recorded_tasks, run_tasks, same_env,
                                         training_episodes, training_seeds)
from worldmodel.io import OutputDir, write_json_atomic, write_summary
from worldmodel.report.plots import EVAL_SUMMARY, plot_eval

BF16_GAIN = "faster plans, more so with compile=true"   # what precision=bf16 gives `wm eval` where it pays
PROGRESS = "progress.json"      # an eval in progress: its finished batches (resume=true continues after them)
OUTPUTS = {"config.json", "results.json", EVAL_SUMMARY, "videos", PROGRESS}   # what an eval writes in out=


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Every refusal first, then the batches not finished yet, then results.json, summary.png and
    the printed line. Returns what results.json holds."""
    run = prepare(cfg)
    run.run()
    summary = run.summary()
    write_summary(run.out.path, summary, EVAL_SUMMARY, plot_eval, summary_line(summary), supersedes=[PROGRESS])
    return summary


def fingerprint(cfg: EvalConfig, device: torch.device) -> dict[str, str]:
    """What else decides an eval's numbers beside its settings: the checkpoint's bytes (its path may
    hold another model by now) and the device the settings resolved to."""
    def sha256(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    fp = {"checkpoint_sha256": sha256(cfg.checkpoint), "device": str(device)}
    if cfg.ensemble:
        fp["ensemble_sha256"] = ",".join(sha256(p) for p in cfg.ensemble)
    return fp


@dataclass
class Progress:
    """An eval's finished batches, saved to progress.json after each one."""

    done: int = 0                                                   # tasks finished
    results: list[dict[str, Any]] = field(default_factory=list)     # the planner's, per task
    floor: list[dict[str, Any]] = field(default_factory=list)       # the random policy's, per task
    latencies: list[float] = field(default_factory=list)            # seconds, per plan
    misses: int = 0                                                 # plans past time_budget_s
    videos: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, out: Path, cfg: EvalConfig, fp: dict[str, str]) -> Progress | None:
        """resume=true: the finished batches of the eval killed in `out`, refused if it ran other
        settings, another checkpoint (same path, other bytes) or on another device."""
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
        return cls(saved["done"], saved["results"], saved["floor"], saved["latencies"], saved["misses"],
                   saved["videos"])

    def save(self, out: Path, cfg: EvalConfig, fp: dict[str, str]) -> None:
        write_json_atomic(out / PROGRESS, {"config": to_dict(cfg), "fingerprint": fp, "done": self.done,
                                           "results": self.results, "floor": self.floor,
                                           "latencies": self.latencies, "misses": self.misses,
                                           "videos": self.videos})


def prepare(cfg: EvalConfig) -> Evaluation:
    """Everything that can be refused, before any rollout: the device, resume or out=, the
    checkpoint, the env and the tasks."""
    from worldmodel.machine import print_precision_note, resolve_device
    from worldmodel.planners import planner_from_config

    device = resolve_device(cfg.device, 0)
    fp = fingerprint(cfg, device)
    saved = Progress.load(Path(cfg.out), cfg, fp) if cfg.resume else None
    out = OutputDir(cfg.out, "eval", OUTPUTS, cfg.overwrite).prepare(resuming=saved is not None)
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph=true needs a CUDA device, and device={cfg.device} resolves to {device}; "
                         "drop cuda_graph=true on the CPU")
    model, meta, env_name, train_cfg = load_model(cfg, device)
    members, member_metas = load_members(cfg, device, model, meta)
    most = min(m.cfg.history for m in [model, *members])      # what the energy reads (every member)
    if cfg.history is not None and cfg.history > most:
        raise ValueError(f"history={cfg.history} but {cfg.checkpoint}{' with its ensemble' if members else ''} "
                         f"attends over at most {most} frames "
                         f"(its training history): use history<={most}")
    print_precision_note("wm eval", cfg.precision, device, BF16_GAIN)
    planner = planner_from_config(cfg.planner)
    env_list = make_envs(env_name, meta, model.cfg, min(cfg.batch, cfg.episodes))
    policy, policy_kwargs = heldout_policy(cfg.policy, cfg.policy_kwargs, meta)
    episode_len = cfg.episode_len or int(meta.get("episode_len") or 100)
    t0 = time.perf_counter()
    if cfg.tasks == "training":
        tasks = training_tasks(cfg, model.cfg, train_cfg)
    else:
        trained = set().union(*(training_seeds(m) for m in [meta, *member_metas]))   # no member's episode
        tasks = make_tasks(env_list[0], policy, cfg.eval_seed, cfg.episodes, episode_len, cfg.goal_offset,
                           trained, policy_kwargs)
    return Evaluation(cfg, out, device, fp, model, meta, env_name, planner, planner.seed, env_list, policy,
                      policy_kwargs, episode_len, tasks, t0, saved or Progress(), saved.done if saved else None, members)


def training_tasks(cfg: EvalConfig, model_cfg: Any, train_cfg: dict[str, Any]) -> list[Task]:
    """tasks=training: LeWM's draw from the episodes the checkpoint trained on (or data=)."""
    from worldmodel.data.dataset import load_dataset

    path, train, _ = training_episodes(train_cfg, model_cfg.history, model_cfg.frameskip, cfg.data)
    ds = load_dataset(path, columns=("state",), episodes=None if train is None else train.tolist())
    seeds = ds.ep_seed if ds.ep_seed is not None else np.arange(ds.num_episodes)   # a foreign file has none
    return recorded_tasks(ds.state, ds.ep_len, ds.ep_offset, seeds, cfg.episodes, cfg.goal_offset, cfg.eval_seed)


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[Any, dict[str, Any], str, dict[str, Any]]:
    """The checkpoint's model, its training data's meta, the env to evaluate in and the training
    config (one read of the checkpoint)."""
    from worldmodel.model.checkpoint import load_checkpoint
    from worldmodel.model.world_model import trained_from_loaded

    ckpt = load_checkpoint(cfg.checkpoint, map_location=device)
    model, meta, env_name = trained_from_loaded(ckpt, device, cfg.env, str(cfg.checkpoint))
    if not same_env(env_name, meta):       # allowed (a variant of the env, a transfer test), but say so
        print(f"wm eval: warning: {cfg.checkpoint} was trained on {meta['env']} data and is evaluated in "
              f"{env_name}; the tasks still use that data's policy and episode length unless policy= "
              f"and episode_len= are given", file=sys.stderr)
    return model, meta, env_name, (ckpt.get("extra") or {}).get("config") or {}


def load_members(cfg: EvalConfig, device: torch.device, model: Any,
                 meta: dict[str, Any]) -> tuple[list, list[dict[str, Any]]]:
    """The models of `ensemble=` and their training data's metas, refused unless trained on the same
    env's data as the checkpoint and reading the same frames and actions."""
    from worldmodel.model.ensemble import check_members
    from worldmodel.model.world_model import load_trained

    members, metas = [], []
    for path in cfg.ensemble:
        m, m_meta, _ = load_trained(path, device, cfg.env)
        if m_meta.get("env") != meta.get("env"):
            raise ValueError(f"ensemble member {path} was trained on {m_meta.get('env')} data, {cfg.checkpoint} on "
                             f"{meta.get('env')} data: an ensemble's models plan the same env")
        members.append(m)
        metas.append(m_meta)
    check_members([model.cfg] + [m.cfg for m in members], [cfg.checkpoint, *cfg.ensemble])
    return members, metas


def make_envs(env_name: str, meta: dict[str, Any], mcfg: Any, n: int) -> list:
    """`n` envs, one per episode of a batch; refused where their actions are not the model's."""
    env_list = [make_env(env_name, meta, mcfg.image_size) for _ in range(n)]
    dims = len(env_list[0].action_space.low)
    if dims != mcfg.action_dim:
        raise ValueError(f"env {env_name} has {dims} action dims; the model was trained on {mcfg.action_dim}")
    return env_list


@dataclass
class Evaluation:
    """A prepared `wm eval`: what passed every refusal, and its progress through the tasks."""

    cfg: EvalConfig
    out: OutputDir
    device: torch.device
    fp: dict[str, str]                 # fingerprint(): checked again on resume
    model: Any
    meta: dict[str, Any]               # the training data's
    env_name: str
    planner: Any
    planner_seed: int                  # the configured one: each batch reseeds from it and its tasks
    env_list: list                     # one env per episode of a batch
    policy: str                        # the held-out episodes'
    policy_kwargs: dict[str, Any]      # ... and its kwargs
    episode_len: int
    tasks: list[Task]
    t0: float                          # wall_s counts from the drawing of the tasks (a resumed run: its own)
    progress: Progress                 # the finished batches: a killed eval's (resume=true), then this run's
    resumed_after: int | None          # the killed eval's finished tasks; None: a fresh eval
    members: list = field(default_factory=list)            # ensemble=: the other models (the first is `model`)
    compiled: dict[str, Any] = field(default_factory=dict)   # compile=true: did the energy plan compiled, and why not

    @property
    def batch(self) -> int:
        return len(self.env_list)

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        space = self.env_list[0].action_space
        return space.low, space.high

    def run(self) -> None:
        """After the last refusal: out= made (or continued), then every batch not finished yet, each
        saved to progress.json as it ends."""
        from worldmodel.model.energy import DTYPES, GoalEnergy
        from worldmodel.model.ensemble import EnsembleEnergy

        cfg = self.cfg
        terms, policy = energy_extras(cfg, self.model)             # refused (a bad file) before out= is touched
        path = self.out.open(cfg)
        kw = dict(static=cfg.cuda_graph, dtype=DTYPES[cfg.precision], compile=cfg.compile,
                  step_weights=cfg.step_weights, goal_at=cfg.goal_at, terms=terms, policy=policy)
        energy = (EnsembleEnergy.of([self.model, *self.members], **kw) if self.members
                  else GoalEnergy(self.model, **kw))
        if self.resumed_after is not None:
            print(f"wm eval: resuming after {self.progress.done} of {len(self.tasks)} episodes ({path / PROGRESS})")
        first = self.progress.done
        bar = None
        if cfg.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(self.tasks), initial=first, desc="eval episodes", unit="ep")
        for b0 in range(first, len(self.tasks), self.batch):
            self.run_batch(b0, energy, compile_warmup=b0 == first)
            self.progress.save(path, cfg, self.fp)
            if bar is not None:
                bar.update(self.progress.done - b0)
                bar.set_postfix(success=f"{np.mean([r['success'] for r in self.progress.results]):.0%}")
        if bar is not None:
            bar.close()
        if cfg.compile:          # refused (compile_refusal) or dropped at a cross-check: compile_note says why
            self.compiled = {"used": energy.compiled, "note": energy.compile_note}

    def run_batch(self, b0: int, energy: Any, compile_warmup: bool) -> None:
        """Tasks b0.. of one batch: planned and run in lockstep, the random floor on the same tasks,
        then the recorded episodes' videos."""
        cfg, p = self.cfg, self.progress
        batch = self.tasks[b0:b0 + self.batch]
        ctrl = self.controller(energy, len(batch))
        goals = goal_images(self.env_list, batch)                          # (b, H, W, 3)
        ctrl.reset(goals, seed=plan_seed(batch[0].seed, self.planner_seed))
        if cfg.cuda_graph:
            ctrl.warmup(2)          # capture every graph outside the timed plans
        elif cfg.compile and (compile_warmup or len(batch) != self.batch):
            ctrl.warmup(1)          # compile every shape (history length, batch) outside them
        res = run_tasks(self.env_list, batch, goals, ctrl.act, cfg.budget, b0 < cfg.videos)
        p.latencies += ctrl.latencies_s
        p.misses += int(ctrl.stats()["deadline_misses"])
        p.results += res
        if cfg.random_floor:
            p.floor += self.random_floor(b0, batch, goals)
        self.write_videos(batch, res)
        p.done = b0 + len(batch)

    def controller(self, energy: Any, batch: int) -> Any:
        """The MPC loop planning `batch` episodes at once."""
        from worldmodel.planners.mpc import MPCController

        cfg, mcfg = self.cfg, self.model.cfg
        return MPCController(self.planner, energy, self.bounds, horizon=cfg.horizon,
                             receding_horizon=cfg.receding_horizon, frameskip=mcfg.frameskip,
                             history=cfg.history or energy.max_history, batch=batch,
                             time_budget_s=cfg.time_budget_s,
                             device=self.device, cuda_graph=cfg.cuda_graph)

    def random_floor(self, b0: int, batch: list[Task], goals: np.ndarray) -> list[dict[str, Any]]:
        """Uniform random actions on the same tasks (numbers only: no frames)."""
        low, high = self.bounds
        rng = np.random.default_rng([self.cfg.eval_seed, b0, 99])
        rand = run_tasks(self.env_list, batch, goals,
                         lambda o: rng.uniform(low, high, (len(o), len(low))).astype(np.float32),  # (b, A)
                         self.cfg.budget, False)
        return [{k: v for k, v in r.items() if k not in ("frames", "goal")} for r in rand]

    def write_videos(self, batch: list[Task], res: list[dict[str, Any]]) -> None:
        """Videos now, so only numbers are kept (and resumed): frames and goal leave each result."""
        for t, r in zip(batch, res):
            frames, goal = r.pop("frames"), r.pop("goal")
            if t.index < self.cfg.videos and frames:
                self.progress.videos.append(_video(self.out.path / "videos" / f"episode_{t.index:03d}.mp4", frames,
                                                   goal, r["steps_to_success"], f"ep {t.index}", fps=10))

    def summary(self) -> dict[str, Any]:
        """What results.json holds: success and its interval, the random floor paired on the same
        tasks, how close the episodes came, plan latency, the protocol and every episode."""
        cfg, p = self.cfg, self.progress
        results, floor, lat = p.results, p.floor, p.latencies
        n, k = len(results), sum(r["success"] for r in results)
        steps = [r["steps_to_success"] for r in results if r["success"]]
        return {
            "env": self.env_name, "trained_env": self.meta.get("env"), "checkpoint": str(cfg.checkpoint),
            "planner": cfg.planner["name"],
            "episodes": n, "successes": k, "success_rate": k / n, "ci95": wilson(k, n),
            "random_floor": floor_summary(results, floor),
            "steps_to_success": {"median": percentile(steps, 50), "mean": float(np.mean(steps)) if steps else None},
            "goal_error": goal_error_summary(results, floor, self.env_list[0].goal_error_names),
            "latency_ms": {"p50": percentile([x * 1e3 for x in lat], 50),
                           "p95": percentile([x * 1e3 for x in lat], 95),
                           "max": max(lat) * 1e3 if lat else None, "plans": len(lat),
                           "batch": self.batch, "note": "one plan = one batched solve for all episodes of a batch"},
            "deadline_misses": p.misses, "device": str(self.device), "precision": cfg.precision,
            "compiled": self.compiled or None,
            "diverged": {"planner": sum(r["diverged_at"] is not None for r in results),
                         "random": sum(r["diverged_at"] is not None for r in floor),
                         "note": "episodes whose physics diverged; each ended there, with what it had reached"},
            "protocol": {"tasks": cfg.tasks, "budget": cfg.budget, "goal_offset": cfg.goal_offset, "eval_seed": cfg.eval_seed,
                         "policy": self.policy, "policy_kwargs": self.policy_kwargs,
                         "episode_len": self.episode_len,
                         "env_kwargs": env_kwargs(self.env_name, self.meta)},
            "wall_s": time.perf_counter() - self.t0, "resumed_after": self.resumed_after or 0,
            "per_episode": episode_rows(self.tasks, results, floor),
            "videos": p.videos, "config": to_dict(cfg),
        }


def energy_extras(cfg: EvalConfig, model: Any) -> tuple[list, Any]:
    """The energy terms `terms.*` asks for and the distilled policy (`distilled=`, refused when it
    was distilled from another model or holds NaN weights)."""
    from worldmodel.model.energy_terms import terms_from_config
    from worldmodel.model.goal_policy import load_policy

    return terms_from_config(cfg.terms), (load_policy(cfg.distilled, model) if cfg.distilled else None)


def floor_summary(results: list[dict[str, Any]], floor: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The random floor's success on the same tasks, and the paired test against the planner."""
    if not floor:
        return None
    n, kf = len(results), sum(r["success"] for r in floor)
    return {"successes": kf, "success_rate": kf / n, "ci95": wilson(kf, n),
            "paired": paired_vs_random([r["success"] for r in results], [r["success"] for r in floor])}


def episode_rows(tasks: list[Task], results: list[dict[str, Any]],
                 floor: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """results.json's per_episode: each task, its outcome and closest approach, and the random floor's."""
    return [{"index": t.index, "seed": t.seed, "start_step": t.start_step,
             "success": r["success"], "steps_to_success": r["steps_to_success"], "diverged_at": r["diverged_at"],
             **{k: round(r[k], 4) for k in ("start_error", "closest_error", "final_error")},
             "closest_parts": [round(v, 4) for v in r.get("closest_parts") or []],   # [] in an older progress.json
             "random_success": (floor[i]["success"] if floor else None),
             "random_closest_error": (round(floor[i]["closest_error"], 4) if floor else None)}
            for i, (t, r) in enumerate(zip(tasks, results))]


def summary_line(summary: dict[str, Any]) -> str:
    """The line `wm eval` ends with: success and its interval, the random floor and the paired test,
    how close the failures came, diverged episodes."""
    n, k = summary["episodes"], summary["successes"]
    lo, hi = summary["ci95"]
    line = f"{summary['env']}: success {k}/{n} = {k / n:.0%} (95% CI {lo:.0%}-{hi:.0%})"
    rf = summary["random_floor"]
    if rf:
        kf, pr = rf["successes"], rf["paired"]
        line += (f"; random floor {kf}/{n} = {kf / n:.0%} (same tasks: planner-only {pr['planner_only']}, "
                 f"random-only {pr['random_only']}, McNemar p = {pr['p_value']:.2g})")
    ge = summary["goal_error"]
    if ge["closest_failures"] is not None:
        line += (f"; failures came within {ge['closest_failures']:.1f}x the tolerance (median; start "
                 f"{ge['start']:.1f}x" + (f", random {ge['random_closest']:.1f}x" if rf else "") + ")")
        parts = ge.get("closest_failures_parts") or {}
        if len(parts) > 1:
            line += " [" + ", ".join(f"{n} {v:.1f}x" for n, v in parts.items()) + "]"
    dv = summary["diverged"]
    if dv["planner"] or dv["random"]:
        line += f"; the physics diverged in {dv['planner']} planner and {dv['random']} random episodes"
    return line


def _video(path: Path, frames: list[np.ndarray], goal: np.ndarray, success_step: int | None,
           title: str, fps: int) -> str:
    """One episode's video: each observation (tagged once the goal is reached) beside the goal image."""
    from worldmodel.report.video import label, side_by_side, upscale, write_video

    size = 192
    g = label(upscale(goal, size), "goal")
    out = []
    for t, f in enumerate(frames):
        done = success_step is not None and t >= success_step
        tag = f"{title} t={t}" + ("  SUCCESS" if done else "")
        out.append(side_by_side([label(upscale(f, size), tag, (120, 255, 120) if done else (255, 255, 255)), g]))
    return str(write_video(path, out, fps=fps))
