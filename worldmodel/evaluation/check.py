"""`wm check`: will this model plan? Simulator-free checks on recorded, held-out episodes.

A task is a window of a held-out episode: its start the history frames, its goal the frame
`goal_offset` steps later, the recorded actions between them one sequence known to reach it. Per
task (scored in check_scoring.py): the rollout error of the recorded actions against "no change",
their goal energy ranked against other tasks' actions and noisy copies, where they land, and the
planner's own solution. Recorded frames only: no state, reward or simulator is read.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.config import to_dict
from worldmodel.evaluation.check_scoring import TaskRows, score_tasks, task_rows
from worldmodel.evaluation.config import CheckConfig
from worldmodel.evaluation.tasks import training_episodes
from worldmodel.io import OutputDir, write_summary

PICTURE = "check.png"
OUTPUTS = {"config.json", "results.json", PICTURE}   # what a check writes in out=


def check(cfg: CheckConfig) -> dict[str, Any]:
    """Every refusal first, then the tasks' frames encoded and the tasks scored batch by batch,
    then results.json, check.png and the printed line. Returns what results.json holds."""
    from worldmodel.machine import resolve_device

    out = OutputDir(cfg.out, "check", OUTPUTS, cfg.overwrite).prepare()
    device = resolve_device(cfg.device, 0)
    run = prepare(cfg, device)
    out.open(cfg)
    t0 = time.perf_counter()
    rows = task_rows(run.model, run.ds, run.starts, cfg.goal_offset, run.decoys, cfg.seed, device, cfg.progress)
    scores = score_tasks(run.model, rows, run.low, run.high, cfg.noise, run.planner, cfg.batch, cfg.seed,
                         device, cfg.progress)
    summary = run.summary(rows, scores, t0)
    write_summary(out.path, summary, PICTURE, run.draw, summary_line(summary),
                  redraw="re-run `wm check ... overwrite=true` to draw it")
    return summary


@dataclass
class Check:
    """A prepared `wm check`: what passed every refusal."""

    cfg: CheckConfig
    model: Any
    ds: Any                    # the episodes checked on
    source: str                # which episodes, in words
    low: np.ndarray            # (A,) action bounds
    high: np.ndarray           # (A,)
    planner: Any | None        # None: plan=false
    planner_name: str
    starts: np.ndarray         # (n,) the tasks' start rows
    decoys: int                # K: other tasks' actions each task's own are ranked against

    def summary(self, rows: TaskRows, r: dict[str, np.ndarray], t0: float) -> dict[str, Any]:
        """What results.json holds: the headline figures, then a row per task."""
        cfg, ds = self.cfg, self.ds
        land = {k: rows.steps[r[k].astype(np.int64)]                                  # (n,) from the goal
                for k in ("land_rec", "land_plan") if k in r}
        summary = summarise(cfg, r, land, self.model.cfg.frameskip, self.decoys,
                            self.planner_name if self.planner else None, self.source)
        summary["wall_s"] = round(time.perf_counter() - t0, 1)
        summary["per_task"] = [
            {"episode": int(ds.ep_index[e]), "start_step": int(s - ds.ep_offset[e]),
             "e_recorded": round(float(r["e_rec"][i]), 5), "ranking_auc": round(float(r["auc"][i]), 4),
             "ranking_auc_noisy": [round(float(x), 4) for x in r["auc_noisy"][i]],
             "landing_recorded": int(land["land_rec"][i]),
             **({"e_plan": round(float(r["e_plan"][i]), 5), "landing_plan": int(land["land_plan"][i])}
                if self.planner else {})}
            for i, (s, e) in enumerate(zip(self.starts, rows.ep))]
        summary["config"] = to_dict(cfg)
        return summary

    def draw(self, summary: dict[str, Any], path: Path) -> None:
        """check.png: the first `grid` tasks of `summary`, from the recorded frames."""
        tasks = summary["per_task"][:self.cfg.grid]
        starts = self.starts[:len(tasks)]
        goals = starts + self.cfg.goal_offset

        def landed(key: str) -> np.ndarray:
            return goals + np.asarray([t[key] for t in tasks], np.int64)
        draw_grid(path, self.ds.pixels, starts, goals, landed("landing_recorded"),
                  landed("landing_plan") if self.planner else None)


def prepare(cfg: CheckConfig, device: torch.device) -> Check:
    """Everything that can be refused, before any model call: the checkpoint, the episodes, their
    frames and actions, the planner, the task windows."""
    from worldmodel.planners import planner_from_config

    model, extra = load_model(cfg, device)
    mc, fs = model.cfg, model.cfg.frameskip
    if cfg.goal_offset % fs:
        raise ValueError(f"goal_offset={cfg.goal_offset} must be a multiple of the model's frameskip ({fs}): "
                         f"plans are made of {fs}-step chunks")
    ds, source = load_episodes(cfg, extra.get("config") or {}, mc.history, fs)
    if tuple(ds.pixels.shape[1:]) != (mc.image_size, mc.image_size, 3):
        raise ValueError(f"frames are {ds.pixels.shape[1:]} but the model takes "
                         f"({mc.image_size}, {mc.image_size}, 3): check the data the model was trained on")
    if ds.action.shape[1] != mc.action_dim:
        raise ValueError(f"the data has {ds.action.shape[1]} action dims; the model was trained on {mc.action_dim}")
    trained_meta = extra.get("dataset_meta") or {}
    if not same_origin(trained_meta, ds.meta or {}):        # allowed (a transfer test), but say so
        print(f"wm check: warning: {cfg.checkpoint} was trained on {origin(trained_meta)} data and is checked on "
              f"{origin(ds.meta)} episodes ({source}): what its energy and rollouts do there says little about "
              "its own system", file=sys.stderr)
    low, high = action_bounds(trained_meta or ds.meta or {}, ds.action)
    planner_cfg = cfg.planner or {"name": "cem"}
    planner = planner_from_config(planner_cfg) if cfg.plan else None
    starts = make_windows(ds, cfg.tasks, mc.history, fs, cfg.goal_offset, cfg.seed)   # (n,)
    return Check(cfg, model, ds, source, low, high, planner, planner_cfg["name"], starts,
                 min(cfg.decoys, len(starts) - 1))


def load_model(cfg: CheckConfig, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The checkpoint's model and what it records beside the weights (its config, its data's meta)."""
    from worldmodel.model.checkpoint import load_checkpoint
    from worldmodel.model.world_model import WorldModel

    ckpt = load_checkpoint(cfg.checkpoint, map_location=device)
    return WorldModel.from_loaded(ckpt, device, source=cfg.checkpoint), ckpt.get("extra") or {}


def action_bounds(meta: dict[str, Any], action: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The action bounds (A,) the data's meta records, or else the recorded actions' range."""
    if "action_low" in meta and "action_high" in meta:
        return np.asarray(meta["action_low"], np.float32), np.asarray(meta["action_high"], np.float32)
    finite = action[np.isfinite(action).all(1)]          # LeWM files record no bounds
    return finite.min(0), finite.max(0)


def origin(meta: dict | None) -> str:
    """Where a dataset came from: its env, or the recorded system's name."""
    meta = meta or {}
    return meta.get("env") or (f"the recording {meta['source']!r}" if meta.get("source") else "unnamed")


def same_origin(a: dict, b: dict) -> bool:
    """Whether two datasets' metadata name the same env or recorded system (True where either names none)."""
    from worldmodel.evaluation.tasks import same_env

    if a.get("env") and b.get("env"):
        return same_env(b["env"], a)
    if not (a.get("env") or a.get("source")) or not (b.get("env") or b.get("source")):
        return True
    return origin(a) == origin(b)


def load_episodes(cfg: CheckConfig, train_cfg: dict, history: int, frameskip: int) -> tuple[Any, str]:
    """The episodes to check on and a note saying which: the training data's held-out split (the
    same seeded split `wm train` validated on) unless `data=` names another recording."""
    from worldmodel.data.dataset import load_dataset

    try:
        path, _, val = training_episodes(train_cfg, history, frameskip, cfg.data)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} (of another path than the training data's, every episode is used: give "
                                "episodes the model did not train on)") from None
    if val is None:
        return load_dataset(path, columns=("pixels", "action")), f"every episode of {path}"
    if len(val) == 0:
        raise ValueError(f"the run held out no episodes of {path} (data.val_fraction=0): pass data=PATH "
                         "of episodes the model was not trained on")
    # (data.episodes = n trains on the first n episodes: positions in them are positions in the whole)
    ds = load_dataset(path, columns=("pixels", "action"), episodes=val.tolist())
    return ds, f"the {len(val)} held-out episodes of {path} (data.val_fraction split)"


def make_windows(ds: Any, n: int, history: int, frameskip: int, offset: int, seed: int) -> np.ndarray:
    """(n,) start rows: random windows, episodes taken in a seeded round robin, with a full history
    before the start, the goal frame inside the episode, finite actions throughout, and a goal
    frame that differs from the start frame (an idle window is no task)."""
    lead = (history - 1) * frameskip
    lens, offs = np.asarray(ds.ep_len), np.asarray(ds.ep_offset)
    eligible = np.flatnonzero(lens - offset > lead)
    if len(eligible) == 0:
        raise ValueError(f"no episode holds a task: one needs {lead + offset + 1} frames ((history-1) x "
                         f"frameskip before the start + goal_offset={offset} after), the longest has "
                         f"{int(lens.max(initial=0))}; lower goal_offset= or record longer episodes")
    rng = np.random.default_rng([seed, 11])
    order = rng.permutation(eligible)
    starts: list[int] = []
    for i in range(20 * n):
        if len(starts) == n:
            break
        e = order[i % len(order)]
        s = int(offs[e] + rng.integers(lead, lens[e] - offset))
        if (np.isfinite(ds.action[s - lead:s + offset]).all()
                and not np.array_equal(ds.pixels[s], ds.pixels[s + offset])):
            starts.append(s)
    if len(starts) < 2:
        raise ValueError("fewer than 2 usable task windows (non-finite actions, or the scene never "
                         "changes within goal_offset): record episodes in which the robot moves")
    return np.asarray(starts, dtype=np.int64)


def summarise(cfg: CheckConfig, r: dict[str, np.ndarray], land: dict[str, np.ndarray], fs: int, K: int,
              planner_name: str | None, source: str) -> dict[str, Any]:
    """The headline figures from the per-task arrays (r: err/nochange (n, H), e_rec, auc, auc_noisy
    (n,), and with a planner e_plan, act_plan, act_decoy (n,), plan_s; land: steps from the goal (n,))."""
    def med(x: np.ndarray) -> float:
        return round(float(np.median(x)), 4)

    def landing(x: np.ndarray) -> dict[str, float]:
        return {"median_abs": med(np.abs(x)), "within_one_chunk": round(float(np.mean(np.abs(x) <= fs)), 4)}

    ratio = r["err"].mean(0) / np.maximum(r["nochange"].mean(0), 1e-12)                # (H,)
    return {
        "checkpoint": cfg.checkpoint, "episodes": source, "tasks": len(r["auc"]),
        "goal_offset": cfg.goal_offset,
        "horizon_chunks": int(r["err"].shape[1]), "frameskip": fs, "decoys": K, "planner": planner_name,
        "rollout": {"ratio_by_chunk": [round(float(x), 4) for x in ratio],
                    "note": "mean open-loop error of the recorded actions / mean 'no change' error, per chunk"},
        "ranking": {"auc": round(float(r["auc"].mean()), 4), "top1": round(float((r["auc"] == 1).mean()), 4),
                    "auc_noisy": [round(float(x), 4) for x in r["auc_noisy"].mean(0)],
                    "noise": list(cfg.noise),
                    "chance_auc": 0.5, "chance_top1": round(1 / (K + 1), 4),
                    "note": "goal energy of the recorded actions vs other tasks' recorded actions (auc, "
                            "top1) and vs K noisy copies of themselves per noise std (auc_noisy), all from the "
                            "same start"},
        "landing_steps": {"recorded": landing(land["land_rec"]),
                          "plan": landing(land["land_plan"]) if planner_name else None,
                          "note": "env steps from the goal frame to the episode frame nearest the predicted "
                                  "last latent, searched within goal_offset of the goal ('no change' lands "
                                  f"at the start: {cfg.goal_offset}); the plan's: where the model believes "
                                  "it leads"},
        "plan": {"energy_vs_recorded_median": med(r["e_plan"] / np.maximum(r["e_rec"], 1e-12)),
                 "at_or_below_recorded": round(float(np.mean(r["e_plan"] <= r["e_rec"])), 4),
                 "action_distance_vs_decoy_median": med(r["act_plan"] / np.maximum(r["act_decoy"], 1e-12)),
                 "solve_s_median": med(r["plan_s"]),
                 "note": "energies are the model's; action distances in units of the bound half-range"}
                if planner_name else None,
    }


def summary_line(summary: dict[str, Any]) -> str:
    """The line `wm check` ends with: rollout error, ranking AUCs, where the recorded actions and the
    plan land."""
    ro, ls, rk = summary["rollout"]["ratio_by_chunk"], summary["landing_steps"], summary["ranking"]
    line = (f"check on {summary['tasks']} tasks ({summary['episodes']}): rollout error {ro[0]:.2f} -> {ro[-1]:.2f} "
            f"x no change over {summary['horizon_chunks']} chunks; recorded actions rank AUC {rk['auc']:.2f} "
            f"against {summary['decoys']} other tasks' and {'/'.join(f'{x:.2f}' for x in rk['auc_noisy'])} "
            f"against noisy copies (std {'/'.join(f'{x:g}' for x in rk['noise'])} x the half-range; chance 0.5); "
            f"they land {ls['recorded']['median_abs']:.0f} steps from the goal frame (median; no change: "
            f"{summary['goal_offset']})")
    if summary["plan"]:
        line += (f", the {summary['planner']} plan {ls['plan']['median_abs']:.0f}; plan energy "
                 f"{summary['plan']['energy_vs_recorded_median']:.2f} x the recorded actions'")
    return line


def draw_grid(path: Path, pixels: np.ndarray, starts: np.ndarray, goals: np.ndarray,
              land_rec: np.ndarray, land_plan: np.ndarray | None, size: int = 128) -> None:
    """One row per task: start | goal | nearest frame to the recorded actions' rollout | to the plan's
    (without a plan: the first three)."""
    import imageio.v2 as iio

    from worldmodel.report.video import label, side_by_side, upscale

    def panel(row: int, text: str) -> np.ndarray:
        return label(upscale(pixels[row], size), text)

    lines = []
    for i, (s, g, a) in enumerate(zip(starts, goals, land_rec)):
        panels = [panel(s, "start"), panel(g, "goal"), panel(a, f"recorded lands {a - g:+d}")]
        if land_plan is not None:
            panels.append(panel(land_plan[i], f"plan lands {land_plan[i] - g:+d}"))
        lines.append(side_by_side(panels))
        lines.append(np.full((4, lines[-1].shape[1], 3), 40, np.uint8))
    iio.imwrite(path, np.concatenate(lines[:-1], axis=0))
