"""Scoring `wm check`'s tasks: the frames and actions each task reads, encoded once, then batch by
batch the recorded actions' open-loop rollout, their goal energy ranked against decoys and noisy
copies, where they land, and the planner's own solution. Scores stay on the device until the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SCORES = ("err", "nochange", "e_rec", "auc", "auc_noisy", "land_rec",       # the recorded actions'
          "e_plan", "land_plan", "act_plan", "act_decoy", "plan_s")        # the planner's (plan=true)


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


@dataclass
class TaskRows:
    """What the tasks read: dataset rows, actions as the model's chunks, and latents."""

    ep: np.ndarray             # (n,) each task's episode
    goal_rows: np.ndarray      # (n,) each task's goal frame
    steps: np.ndarray          # (W,) env steps from the goal frame of each window frame
    past: torch.Tensor         # (n, h-1, fs*A) the actions before the start
    rec: torch.Tensor          # (n, H, fs*A) the recorded actions from the start to the goal
    z_hist: torch.Tensor       # (n, h, D) the history frames'
    z_fut: torch.Tensor        # (n, H, D) the frames after each recorded chunk (the last: the goal)
    z_win: torch.Tensor        # (n, W, D) the frames within goal_offset of the goal
    valid: torch.Tensor        # (n, W) window frames inside the task's episode
    decoys: np.ndarray         # (n, K) other tasks whose recorded actions are ranked against its own


def task_rows(model: Any, ds: Any, starts: np.ndarray, goal_offset: int, decoys: int, seed: int,
              device: torch.device, progress: bool) -> TaskRows:
    """The rows of every frame and action the tasks starting at `starts` touch, their frames
    encoded once, and each task's decoys."""
    mc, n = model.cfg, len(starts)
    fs, A = mc.frameskip, ds.action.shape[1]
    H = goal_offset // fs                                                             # planned chunks
    lead = (mc.history - 1) * fs
    ep = np.searchsorted(np.asarray(ds.ep_offset), starts, side="right") - 1          # (n,)
    ep_lo, ep_hi = ds.ep_offset[ep], ds.ep_offset[ep] + ds.ep_len[ep] - 1             # (n,)
    hist_rows = starts[:, None] + fs * (np.arange(mc.history) - mc.history + 1)       # (n, h)
    fut_rows = starts[:, None] + fs * np.arange(1, H + 1)                            # (n, H)
    goal_rows = fut_rows[:, -1]                                                       # (n,)
    steps = np.arange(-goal_offset, goal_offset + 1)                                 # (W,) from the goal
    win_rows = goal_rows[:, None] + steps                                             # (n, W)
    valid = (win_rows >= ep_lo[:, None]) & (win_rows <= ep_hi[:, None])              # (n, W)
    win_rows = np.clip(win_rows, ep_lo[:, None], ep_hi[:, None])

    def chunks(first: np.ndarray, m: int) -> torch.Tensor:                           # (n, m, fs*A)
        return torch.from_numpy(ds.action[first[:, None] + np.arange(m * fs)].reshape(n, m, fs * A)).to(device)
    past, rec = chunks(starts - lead, mc.history - 1), chunks(starts, H)              # (n, h-1|H, fs*A)

    uniq = np.unique(np.concatenate([hist_rows.ravel(), win_rows.ravel()]))
    z_all = encode_rows(model, ds.pixels, uniq, device, progress)                     # (U, D)

    def z_of(rows: np.ndarray) -> torch.Tensor:                                       # (*rows.shape, D)
        return z_all[torch.from_numpy(np.searchsorted(uniq, rows)).to(device)]
    rng = np.random.default_rng([seed, 13])
    decoy_idx = np.stack([rng.choice(np.delete(np.arange(n), i), decoys, replace=False)
                          for i in range(n)])                                          # (n, K)
    return TaskRows(ep, goal_rows, steps, past, rec, z_of(hist_rows), z_of(fut_rows), z_of(win_rows),
                    torch.from_numpy(valid).to(device), decoy_idx)


def score_tasks(model: Any, rows: TaskRows, low: np.ndarray, high: np.ndarray, noise: list[float],
                planner: Any | None, batch: int, seed: int, device: torch.device,
                progress: bool) -> dict[str, np.ndarray]:
    """Every task scored, `batch` at a time: SCORES (the planner's only with a planner) as arrays,
    one row per task (err, nochange (n, H); auc_noisy (n, len(noise)); the rest (n,))."""
    scorer = Scorer(model, rows, low, high, noise, planner, seed, device)
    n = len(rows.goal_rows)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc="check tasks", unit="task")
    for b0 in range(0, n, batch):
        sl = slice(b0, min(n, b0 + batch))
        scorer.score(sl)
        if bar is not None:
            bar.update(sl.stop - sl.start)
    if bar is not None:
        bar.close()
    return scorer.results()


class Scorer:
    """Scores batches of tasks with the model's goal energy, collecting the scores on the device."""

    def __init__(self, model: Any, rows: TaskRows, low: np.ndarray, high: np.ndarray, noise: list[float],
                 planner: Any | None, seed: int, device: torch.device) -> None:
        from worldmodel.model.energy import GoalEnergy
        from worldmodel.planners import Bounds

        fs = model.cfg.frameskip
        self.rows, self.noise, self.planner, self.device = rows, noise, planner, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.bounds = Bounds.make(np.tile(low, fs), np.tile(high, fs), device=device)     # (fs*A,) per chunk
        self.energy = GoalEnergy(model, goal_at="last_chunk")   # scores rank whole sequences by where they end
        self.scores: dict[str, list[torch.Tensor]] = {k: [] for k in SCORES}

    def score(self, sl: slice) -> None:
        """Tasks `sl`: their recorded actions, then the planner's solution (with a planner)."""
        zg = self.recorded(sl)
        if self.planner is not None:
            self.plan(sl, zg)

    def recorded(self, sl: slice) -> torch.Tensor:
        """The recorded actions of tasks `sl`: open-loop error against the encoded true frames and
        against "no change", their goal energy ranked against the decoys' and noisy copies', where
        they land. Returns the goal latents (b, D), the energy set to these tasks."""
        t, s, energy = self.rows, self.scores, self.energy
        zg = t.z_fut[sl, -1]                                                          # (b, D)
        energy.set_latent_history(t.z_hist[sl], t.past[sl])
        energy.set_goal_latent(zg)
        cands = torch.cat([t.rec[sl, None], t.rec[torch.from_numpy(t.decoys[sl])]], 1)   # (b, 1+K, H, fs*A)
        lat = energy.latents(cands)                                                   # (b, 1+K, H, D)
        e = (lat[:, :, -1] - zg[:, None]).square().sum(-1)                            # (b, 1+K)
        s["err"].append((lat[:, 0] - t.z_fut[sl]).square().sum(-1))                  # (b, H)
        s["nochange"].append((t.z_hist[sl, -1:] - t.z_fut[sl]).square().sum(-1))     # (b, H)
        s["e_rec"].append(e[:, 0])
        s["auc"].append(rank_auc(e[:, 0], e[:, 1:]))                                 # (b,)
        s["auc_noisy"].append(self.noisy_auc(t.rec[sl], e[:, 0], cands.shape[1] - 1))  # (b, len(noise))
        s["land_rec"].append(nearest_step(lat[:, 0, -1], t.z_win[sl], t.valid[sl]))
        return zg

    def noisy_auc(self, rec: torch.Tensor, e_rec: torch.Tensor, k: int) -> torch.Tensor:
        """The recorded actions rec (b, H, fs*A), energy e_rec (b,), ranked against k noisy copies of
        themselves per noise std (x the bounds' half-range, per step): (b, len(noise))."""
        noise = torch.randn((rec.shape[0], k, *rec.shape[1:]), generator=self.gen,
                            device=self.device)                                       # (b, K, H, fs*A)
        auc = []
        for sigma in self.noise:
            noisy = self.bounds.clip(rec[:, None] + sigma * self.bounds.half_range * noise)   # (b, K, H, fs*A)
            auc.append(rank_auc(e_rec, self.energy(noisy)))                           # energy (b, K)
        return torch.stack(auc, 1)

    def plan(self, sl: slice, zg: torch.Tensor) -> None:
        """The planner's solution for tasks `sl` (goal latents zg (b, D)): its energy, where it lands,
        and how far its actions are from the recorded ones, beside a decoy's distance."""
        t, s, bounds = self.rows, self.scores, self.bounds
        res = self.planner.solve(self.energy, bounds, t.rec.shape[1], batch=zg.shape[0])   # actions (b, H, fs*A)
        s["plan_s"].append(torch.tensor([res.latency_s]))                             # timed by the solve
        lat_p = self.energy.latents(res.actions[:, None])[:, 0, -1]                   # (b, D)
        s["e_plan"].append((lat_p - zg).square().sum(-1))
        s["land_plan"].append(nearest_step(lat_p, t.z_win[sl], t.valid[sl]))
        scale = bounds.half_range                                                     # distances in box units
        s["act_plan"].append(((res.actions - t.rec[sl]) / scale).square().mean((1, 2)).sqrt())
        s["act_decoy"].append(((t.rec[torch.from_numpy(t.decoys[sl, 0])] - t.rec[sl]) / scale)
                              .square().mean((1, 2)).sqrt())

    def results(self) -> dict[str, np.ndarray]:
        """The scores collected, as host arrays (those never scored left out)."""
        return {k: torch.cat(v).float().cpu().numpy() for k, v in self.scores.items() if v}   # host sync, once
