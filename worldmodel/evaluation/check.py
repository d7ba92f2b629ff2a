"""`wm check`: will this model plan? Simulator-free checks on recorded, held-out episodes.

    wm check checkpoint=runs/arm/best.pt                      # the training data's held-out episodes
    wm check checkpoint=runs/arm/best.pt data=data/arm_test   # every episode of another recording

`wm eval` scores plans in a simulator. A model trained on a real robot's recordings has none, and
its validation loss says little about planning. This command poses the planning problem on
recorded episodes instead: a task is a window of a held-out episode, its start the history frames,
its goal the frame `goal_offset` steps later, and the recorded actions between them one action
sequence known to reach that goal. Per task it measures:

  rollout  the predictor run open loop on the recorded actions, chunk by chunk, against the encoded
           true frames, as a fraction of the "no change" error (the start latent held fixed);
  ranking  the goal energy of the recorded actions ranked against the recorded actions of `decoys`
           other tasks, all from this task's start (AUC: 0.5 = the energy cannot tell the sequence
           that reaches the goal from others the robot really executed; 1 = always ranks it first),
           and against as many noisy copies of themselves for each std in `noise` (x the bounds'
           half-range, per step): near misses, a finer test of how sharply the energy singles
           out the sequence that reaches the goal;
  landing  where the model thinks the recorded actions lead: the frame of the episode, within
           goal_offset steps of the goal, whose latent is nearest the rollout's last latent, in env
           steps from the goal frame ("no change" lands at the start: goal_offset steps away);
  plan     the planner's own solution: its energy against the recorded actions' (at or below 1:
           the optimiser found what the model rates as good as the demonstration), how far its
           actions are from the recorded ones as a fraction of a decoy's distance, where it lands.

check.png draws tasks as start | goal | where the recorded actions land | where the plan lands:
the model has no decoder, so each prediction is shown as the recorded frame nearest to it in
latent space. results.json holds every figure and the per-task rows. Scoring uses recorded frames
only; no state, reward or simulator is read.

Measured next to `wm eval` (README, "Simulator-free check"): models the check finds blind to actions
(AUC ~0.5) did not plan above random; passing it shows how finely the model resolves motion (the
landing steps), which can still be coarser than a task's success tolerance (Push-T's block).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldmodel.config import to_dict
from worldmodel.evaluation.config import CheckConfig
from worldmodel.io import check_output, save_resolved, write_json_atomic


OUTPUTS = {"config.json", "results.json", "check.png"}   # what a check writes in out=


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
    from worldmodel.data.clips import ClipSpec, split_episodes
    from worldmodel.data.dataset import load_dataset

    dcfg = train_cfg.get("data") or {}
    train_path = dcfg.get("path")
    path = cfg.data or train_path
    if not path:
        raise ValueError(f"{cfg.checkpoint} records no training data path; pass data=PATH")
    if not Path(path).exists():
        raise FileNotFoundError(f"dataset {path} does not exist here; pass data=PATH (of another path than "
                                "the training data's, every episode is used: give episodes the model did not "
                                "train on)")
    held_out = train_path is not None and Path(path).resolve() == Path(train_path).resolve()
    if not held_out:
        return load_dataset(path, columns=("pixels", "action")), f"every episode of {path}"
    lens = load_dataset(path, columns=("action",), episodes=dcfg.get("episodes")).ep_len
    spec = ClipSpec(history, int(dcfg.get("n_preds", 1)), frameskip)
    _, val = split_episodes(lens, spec, float(dcfg.get("val_fraction", 0.1)), int(dcfg.get("split_seed", 0)))
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


@torch.no_grad()
def encode_rows(model: Any, pixels: np.ndarray, rows: np.ndarray, device: torch.device,
                progress: bool = False, batch: int = 256) -> torch.Tensor:
    """Latents (len(rows), D) of dataset frames `rows`."""
    from tqdm import tqdm

    out = [model.encode(torch.from_numpy(pixels[rows[i:i + batch]]).to(device))   # (b, D)
           for i in tqdm(range(0, len(rows), batch), desc="encode frames", unit="batch", disable=not progress)]
    return torch.cat(out)


def rank_auc(e_true: torch.Tensor, e_other: torch.Tensor) -> torch.Tensor:
    """Per task (B,): the fraction of other sequences (B, K) whose energy is above the true one's
    (B,), ties counting half: 1 = the true sequence ranks first, 0.5 = the energy cannot tell."""
    return ((e_other > e_true[:, None]).float() + 0.5 * (e_other == e_true[:, None]).float()).mean(1)


def nearest_step(z: torch.Tensor, z_win: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the window frame whose latent (B, W, D) is nearest z (B, D); invalid masked."""
    d = (z_win - z[:, None]).square().sum(-1)                       # (B, W)
    return d.masked_fill(~valid, float("inf")).argmin(1)


def check(cfg: CheckConfig) -> dict[str, Any]:
    from worldmodel.planners import Bounds, planner_from_config
    from worldmodel.machine import resolve_device
    from worldmodel.model.checkpoint import load_checkpoint
    from worldmodel.model.energy import GoalEnergy
    from worldmodel.model.world_model import WorldModel

    out = Path(cfg.out)
    replace = check_output(out, cfg.overwrite, OUTPUTS, "check")
    device = resolve_device(cfg.device, 0)

    # Everything that can be refused is checked before any model call.
    ckpt = load_checkpoint(cfg.checkpoint, map_location=device)
    model = WorldModel.from_loaded(ckpt, device, source=cfg.checkpoint)
    extra = ckpt.get("extra") or {}
    mc, fs = model.cfg, model.cfg.frameskip
    if cfg.goal_offset % fs:
        raise ValueError(f"goal_offset={cfg.goal_offset} must be a multiple of the model's frameskip ({fs}): "
                         f"plans are made of {fs}-step chunks")
    H = cfg.goal_offset // fs                                       # planned chunks
    ds, source = load_episodes(cfg, extra.get("config") or {}, mc.history, fs)
    if tuple(ds.pixels.shape[1:]) != (mc.image_size, mc.image_size, 3):
        raise ValueError(f"frames are {ds.pixels.shape[1:]} but the model takes "
                         f"({mc.image_size}, {mc.image_size}, 3): check the data the model was trained on")
    A = ds.action.shape[1]
    if A != mc.action_dim:
        raise ValueError(f"the data has {A} action dims; the model was trained on {mc.action_dim}")
    trained_meta = extra.get("dataset_meta") or {}
    if not same_origin(trained_meta, ds.meta or {}):        # allowed (a transfer test), but say so
        print(f"wm check: warning: {cfg.checkpoint} was trained on {origin(trained_meta)} data and is checked on "
              f"{origin(ds.meta)} episodes ({source}): what its energy and rollouts do there says little about "
              "its own system", file=sys.stderr)
    meta = trained_meta or ds.meta or {}
    if "action_low" in meta and "action_high" in meta:
        low, high = np.asarray(meta["action_low"], np.float32), np.asarray(meta["action_high"], np.float32)
    else:                                 # LeWM files record no bounds: the recorded actions' range
        finite = ds.action[np.isfinite(ds.action).all(1)]
        low, high = finite.min(0), finite.max(0)
    planner_cfg = cfg.planner or {"name": "cem"}
    planner_name = planner_cfg["name"]
    planner = planner_from_config(planner_cfg) if cfg.plan else None
    starts = make_windows(ds, cfg.tasks, mc.history, fs, cfg.goal_offset, cfg.seed)   # (n,)
    n, K = len(starts), min(cfg.decoys, len(starts) - 1)
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)  # after the last refusal: a refused check leaves no out
    save_resolved(cfg, out)
    t0 = time.perf_counter()

    # Rows of every frame and action the tasks touch.
    lead = (mc.history - 1) * fs
    ep = np.searchsorted(np.asarray(ds.ep_offset), starts, side="right") - 1          # (n,)
    ep_lo, ep_hi = ds.ep_offset[ep], ds.ep_offset[ep] + ds.ep_len[ep] - 1             # (n,)
    hist_rows = starts[:, None] + fs * (np.arange(mc.history) - mc.history + 1)       # (n, h)
    fut_rows = starts[:, None] + fs * np.arange(1, H + 1)                            # (n, H)
    goal_rows = fut_rows[:, -1]                                                       # (n,)
    steps = np.arange(-cfg.goal_offset, cfg.goal_offset + 1)                         # (W,) from the goal
    win_rows = goal_rows[:, None] + steps                                             # (n, W)
    valid = (win_rows >= ep_lo[:, None]) & (win_rows <= ep_hi[:, None])              # (n, W)
    win_rows = np.clip(win_rows, ep_lo[:, None], ep_hi[:, None])

    def chunks(first: np.ndarray, m: int) -> np.ndarray:                             # (n, m, fs*A)
        return ds.action[first[:, None] + np.arange(m * fs)].reshape(n, m, fs * A)
    past = torch.from_numpy(chunks(starts - lead, mc.history - 1)).to(device)        # (n, h-1, fs*A)
    rec = torch.from_numpy(chunks(starts, H)).to(device)                              # (n, H, fs*A)

    uniq = np.unique(np.concatenate([hist_rows.ravel(), win_rows.ravel()]))
    z_all = encode_rows(model, ds.pixels, uniq, device, cfg.progress)                 # (U, D)

    def z_of(rows: np.ndarray) -> torch.Tensor:                                       # (*rows.shape, D)
        return z_all[torch.from_numpy(np.searchsorted(uniq, rows)).to(device)]
    z_hist, z_fut, z_win = z_of(hist_rows), z_of(fut_rows), z_of(win_rows)           # (n, h|H|W, D)
    valid_t = torch.from_numpy(valid).to(device)
    rng = np.random.default_rng([cfg.seed, 13])
    decoy_idx = np.stack([rng.choice(np.delete(np.arange(n), i), K, replace=False)
                          for i in range(n)])                                          # (n, K)

    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    bounds = Bounds.make(np.tile(low, fs), np.tile(high, fs), device=device)          # (fs*A,) per chunk
    energy = GoalEnergy(model)
    rows: dict[str, list] = {k: [] for k in ("err", "nochange", "e_rec", "auc", "auc_noisy", "land_rec",
                                              "e_plan", "land_plan", "act_plan", "act_decoy", "plan_s")}
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="check tasks", unit="task")
    for b0 in range(0, n, cfg.batch):
        sl = slice(b0, min(n, b0 + cfg.batch))
        zg = z_fut[sl, -1]                                                            # (b, D)
        energy.set_latent_history(z_hist[sl], past[sl])
        energy.set_goal_latent(zg)
        cands = torch.cat([rec[sl, None], rec[torch.from_numpy(decoy_idx[sl])]], 1)   # (b, 1+K, H, fs*A)
        lat = energy.latents(cands)                                                   # (b, 1+K, H, D)
        e = (lat[:, :, -1] - zg[:, None]).square().sum(-1)                            # (b, 1+K)
        rows["err"].append((lat[:, 0] - z_fut[sl]).square().sum(-1))                 # (b, H)
        rows["nochange"].append((z_hist[sl, -1:] - z_fut[sl]).square().sum(-1))       # (b, H)
        rows["e_rec"].append(e[:, 0])
        rows["auc"].append(rank_auc(e[:, 0], e[:, 1:]))                              # (b,)
        noise = torch.randn(cands[:, 1:].shape, generator=gen, device=device)         # (b, K, H, fs*A)
        auc_noisy = []
        for sigma in cfg.noise:
            noisy = bounds.clip(rec[sl, None] + sigma * bounds.half_range * noise)    # (b, K, H, fs*A)
            auc_noisy.append(rank_auc(e[:, 0], energy(noisy)))                        # energy (b, K)
        rows["auc_noisy"].append(torch.stack(auc_noisy, 1))                           # (b, len(noise))
        rows["land_rec"].append(nearest_step(lat[:, 0, -1], z_win[sl], valid_t[sl]))
        if planner is None:
            if bar is not None:
                bar.update(zg.shape[0])
            continue
        res = planner.solve(energy, bounds, H, batch=zg.shape[0])                     # actions (b, H, fs*A)
        rows["plan_s"].append(torch.tensor([res.latency_s]))                          # timed by the solve
        lat_p = energy.latents(res.actions[:, None])[:, 0, -1]                        # (b, D)
        rows["e_plan"].append((lat_p - zg).square().sum(-1))
        rows["land_plan"].append(nearest_step(lat_p, z_win[sl], valid_t[sl]))
        scale = bounds.half_range                                                     # distances in box units
        rows["act_plan"].append(((res.actions - rec[sl]) / scale).square().mean((1, 2)).sqrt())
        rows["act_decoy"].append(((rec[torch.from_numpy(decoy_idx[sl, 0])] - rec[sl]) / scale)
                                 .square().mean((1, 2)).sqrt())
        if bar is not None:
            bar.update(zg.shape[0])
    if bar is not None:
        bar.close()
    r = {k: torch.cat(v).float().cpu().numpy() for k, v in rows.items() if v}   # host sync, once at the end
    land = {k: steps[r[k].astype(np.int64)] for k in ("land_rec", "land_plan") if k in r}   # (n,) from the goal
    summary = summarise(cfg, r, land, fs, K, planner_name if planner else None, source)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["per_task"] = [
        {"episode": int(ds.ep_index[e]), "start_step": int(s - ds.ep_offset[e]),
         "e_recorded": round(float(r["e_rec"][i]), 5), "ranking_auc": round(float(r["auc"][i]), 4),
         "ranking_auc_noisy": [round(float(x), 4) for x in r["auc_noisy"][i]],
         "landing_recorded": int(land["land_rec"][i]),
         **({"e_plan": round(float(r["e_plan"][i]), 5), "landing_plan": int(land["land_plan"][i])}
            if planner else {})}
        for i, (s, e) in enumerate(zip(starts, ep))]
    summary["config"] = to_dict(cfg)
    write_json_atomic(out / "results.json", summary)
    g = slice(0, cfg.grid)
    draw_grid(out / "check.png", ds.pixels, starts[g], goal_rows[g], (goal_rows + land["land_rec"])[g],
              (goal_rows + land["land_plan"])[g] if planner else None)
    ro, ls, rk = summary["rollout"]["ratio_by_chunk"], summary["landing_steps"], summary["ranking"]
    line = (f"check on {n} tasks ({source}): rollout error {ro[0]:.2f} -> {ro[-1]:.2f} x no change over {H} "
            f"chunks; recorded actions rank AUC {rk['auc']:.2f} against {K} other tasks' and "
            f"{'/'.join(f'{x:.2f}' for x in rk['auc_noisy'])} against noisy copies (std "
            f"{'/'.join(f'{x:g}' for x in cfg.noise)} x the half-range; chance 0.5); they land "
            f"{ls['recorded']['median_abs']:.0f} steps from the goal frame (median; no change: "
            f"{cfg.goal_offset})")
    if planner:
        line += (f", the {planner_name} plan {ls['plan']['median_abs']:.0f}; plan energy "
                 f"{summary['plan']['energy_vs_recorded_median']:.2f} x the recorded actions'")
    print(line + f"; results in {out / 'results.json'}, picture in {out / 'check.png'}")
    return summary


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
