"""Validation of a world model on held-out clips, with collapse diagnostics.

The prediction loss alone cannot tell learning from collapse (a constant encoder predicts itself
perfectly), so `evaluate` reports it next to the "predict no change" baseline, the open-loop error
(n_preds >= 2), the SIGReg statistic, per-dimension std, effective rank and, where the data has
states, a linear state probe. Under DDP every rank evaluates its slice of the same fixed clips and
the results are reduced, so all ranks return identical numbers.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from worldmodel.data.clips import ClipDataset, ClipSpec, valid_starts


@torch.no_grad()
def evaluate(model: Any, val: ClipDataset, max_clips: int, batch_size: int, device: torch.device,
             amp: Any, sigreg_directions: int = 1024, sigreg_knots: int = 17) -> dict[str, float]:
    """Held-out metrics on up to `max_clips` clips spread evenly over `val` (the same clips every time):

    val_pred, val_nochange (mse(z_t, z_{t+1}) with the same encoder: a useful model beats it),
    val_ratio, val_sigreg, std_mean, std_min, eff_rank; with n_preds >= 2 val_open_loop (the
    predictor rolled out on its own outputs, as the planner runs it) and val_open_loop_ratio (to
    holding the last observed latent); probe_r2 where the data has states (`state_probe`).
    """
    from worldmodel.model.sigreg import sigreg

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    m = min(len(val), max_clips)
    idx = np.linspace(0, len(val) - 1, m).round().astype(np.int64)             # (m,)
    per = max(1, m // world)
    mine = torch.from_numpy(idx[rank * per:(rank + 1) * per] if m >= world else idx[:1])
    was_training = model.training
    model.eval()
    h, open_loop = model.cfg.history, val.spec.n_preds >= 2
    sums = torch.zeros(6, device=device, dtype=torch.float64)  # pred, nochange, count, open loop: err, hold, count
    zs = []
    for chunk in mine.split(max(1, batch_size)):
        pixels, actions = val.get_batch(chunk)
        pixels, actions = pixels.to(device), actions.to(device)        # (b, T, H, W, 3), (b, T-1, c)
        with amp:
            out = model.loss(pixels, actions, open_loop)
        z, z_hat = out["z"].float(), out["z_hat"].float()               # (b, T, D), (b, T-1, D)
        sums[0] += F.mse_loss(z_hat, z[:, 1:], reduction="sum")
        sums[1] += F.mse_loss(z[:, :-1], z[:, 1:], reduction="sum")
        sums[2] += z[:, 1:].numel()
        if open_loop:
            n = z[:, h:].numel()
            sums[3] += out["open_loop"].double() * n                   # a mean over the b clips
            sums[4] += F.mse_loss(z[:, h - 1:h].expand_as(z[:, h:]), z[:, h:], reduction="sum")
            sums[5] += n
        zs.append(z)
    z = torch.cat(zs)                                                  # (m/world, T, D)
    g = torch.Generator(device=device).manual_seed(12345)              # same directions every eval
    reg = sigreg(z, sigreg_directions, sigreg_knots, generator=g)      # global batch under DDP
    if world > 1:
        dist.all_reduce(sums)
        gathered = [torch.empty_like(z) for _ in range(world)]
        dist.all_gather(gathered, z)
        z = torch.cat(gathered)                                        # (m, T, D)
    if was_training:
        model.train()
    pred, nochange, count, ol, hold, ol_count = sums.tolist()          # host sync (eval only)
    res = {"val_pred": pred / count, "val_nochange": nochange / count, "val_sigreg": float(reg)}
    res["val_ratio"] = res["val_pred"] / max(res["val_nochange"], 1e-12)
    if open_loop:
        res["val_open_loop"] = ol / ol_count
        res["val_open_loop_ratio"] = ol / max(hold, 1e-12)
    res.update(embedding_diagnostics(z))
    states = val.frame_states(idx[:per * world]) if m >= world else None   # (m, T, S) | None
    if states is not None:                   # rows line up with the gathered z: rank slices in order
        res.update(state_probe(z, states))
    return res


@torch.no_grad()
def state_probe(z: torch.Tensor, states: np.ndarray, ridge: float = 1e-3) -> dict[str, float]:
    """Ridge-regress the state from the latents: fit on the first half of the clips, score R^2 on
    the second (clips are ordered by episode, so the halves share few episodes). A model can predict
    its own latents well while they barely hold the state, and then planning on latent distances is
    weak: the probe shows it. The state is only read to score, never to train.

    z (M, T, D), states (M, T, F) -> probe_r2: mean R^2 over the features that vary in the scored
    half (the pose features of `ClipDataset.frame_states`, or raw states for data without a pose record).
    """
    m = z.shape[0] // 2
    if m < 2:
        return {}
    x = z.reshape(z.shape[0], -1, z.shape[-1]).double().cpu()                 # (M, T, D)
    y = torch.as_tensor(states, dtype=torch.float64).reshape(states.shape[0], -1, states.shape[-1])
    x_fit, x_te = x[:m].reshape(-1, x.shape[-1]), x[m:].reshape(-1, x.shape[-1])   # (m*T, D)
    y_fit, y_te = y[:m].reshape(-1, y.shape[-1]), y[m:].reshape(-1, y.shape[-1])   # (m*T, S)
    mu, sd = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    a_fit = torch.cat([(x_fit - mu) / sd, torch.ones(len(x_fit), 1, dtype=x.dtype)], 1)  # (n, D+1)
    a_te = torch.cat([(x_te - mu) / sd, torch.ones(len(x_te), 1, dtype=x.dtype)], 1)
    gram = a_fit.T @ a_fit + ridge * len(a_fit) * torch.eye(a_fit.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, a_fit.T @ y_fit)                              # (D+1, S)
    ss_res = (a_te @ w - y_te).square().sum(0)                                 # (S,)
    ss_tot = (y_te - y_te.mean(0)).square().sum(0)                             # (S,)
    ok = ss_tot > 1e-9 * len(y_te)
    if not bool(ok.any()):
        return {}
    return {"probe_r2": float((1 - ss_res[ok] / ss_tot[ok]).mean())}


@torch.no_grad()
def embedding_diagnostics(z: torch.Tensor) -> dict[str, float]:
    """Collapse diagnostics of embeddings z (..., D) flattened to (N, D).

    std_mean / std_min: per-dimension standard deviation (SIGReg drives it towards 1);
    eff_rank: exp(entropy of the normalised singular values of the centred embedding matrix),
    between 1 (all embeddings on a line) and D (isotropic). It ignores scale, so read it with the
    std: a collapsed encoder's leftover numerical noise can look high-rank.
    """
    x = z.reshape(-1, z.shape[-1]).float()                                # (N, D)
    std = x.std(dim=0)                                                    # (D,)
    x = x - x.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)                                           # (min(N, D),)
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    # One host sync per diagnostic call (eval only, not in the training loop).
    return {"std_mean": float(std.mean()), "std_min": float(std.min()),
            "eff_rank": float(math.exp(float(entropy)))}


@torch.no_grad()
def recalibrate_batchnorm(model: Any, clips: ClipDataset, batches: int, batch_size: int,
                          device: torch.device, amp: Any, seed: int) -> None:
    """Recompute every BatchNorm's running statistics for the current weights.

    BatchNorm's running averages lag an encoder that is still moving, and eval mode (planning,
    validation) uses them, so a model looks far worse held out than it is. Before each validation
    and checkpoint the statistics are therefore re-estimated as a plain average over `batches`
    training batches (dropout off, no gradients). Deterministic in `seed`; training itself is
    unaffected (train mode normalises with batch statistics).
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or batches < 1:
        return
    was_training = model.training
    model.eval()                                                         # dropout off
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None                                               # cumulative average
        bn.train()
    rng = np.random.default_rng(seed)
    for _ in range(batches):
        idx = torch.from_numpy(rng.integers(0, len(clips), batch_size))
        pixels, actions = clips.get_batch(idx)
        with amp:
            model.loss(pixels.to(device), actions.to(device))
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    model.train(was_training)


@torch.no_grad()
def encode_rows(model: Any, pixels: np.ndarray, batch: int) -> torch.Tensor:
    """Every frame (N, H, W, 3) uint8 -> latents (N, D) float32 on the model's device."""
    device = next(model.parameters()).device
    out = [model.encode(torch.from_numpy(pixels[i:i + batch]).to(device)).float()
           for i in range(0, len(pixels), batch)]
    return torch.cat(out) if out else torch.zeros(0, model.cfg.latent_dim, device=device)


def episode_rows(clips: ClipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Dataset rows (n,) of every frame of the episodes of `clips`, episode after episode, and
    those episodes' lengths (E,)."""
    lens = clips.ep_len[clips.episodes]                                      # (E,)
    return np.concatenate([np.arange(o, o + n) for o, n in zip(clips.ep_offset[clips.episodes], lens)]), lens


@torch.no_grad()
def held_out_errors(model: Any, clips: ClipDataset, batch: int = 256) -> np.ndarray:
    """one_step_errors over the episodes of `clips` (a run's held-out split), encoding only their frames."""
    rows, lens = episode_rows(clips)                                         # (n,), (E,)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)  # (E,) into `rows`
    z = encode_rows(model, clips.pixels[rows], batch)                        # (n, D)
    return one_step_errors(model, z, clips.action[rows], lens, offsets)


@torch.no_grad()
def one_step_errors(model: Any, z: torch.Tensor, action: np.ndarray, ep_len: np.ndarray, ep_offset: np.ndarray,
                    batch: int = 4096) -> np.ndarray:
    """The world model's one-step prediction error (mean squared per latent dimension) of every
    frame with `history - 1` observed frames before it (the context the surprise monitor scores a
    new frame in: MPCController passes `history` frames, the newest is predicted from the others).

    z (N, D) latents of every dataset row, action (N, A) raw -> errors (n,)."""
    fs, context = model.cfg.frameskip, max(model.cfg.history - 1, 1)
    starts = valid_starts(ep_len, ep_offset, ClipSpec(context, 1, fs))     # (n,) windows inside one episode
    rows = starts[:, None] + np.arange(context + 1) * fs                     # (n, context + 1)
    out = []
    for part in np.array_split(rows, max(1, -(-len(rows) // batch))) if len(rows) else []:
        zw = z[torch.from_numpy(part)]                                       # (b, context + 1, D)
        arows = part[:, :context, None] + np.arange(fs)                      # (b, context, fs)
        acts = torch.from_numpy(action[arows].reshape(len(part), context, -1)).to(z.device)  # (b, context, chunk)
        z_hat = model.predict(zw[:, :-1], acts)[:, -1].float()               # (b, D)
        out.append((z_hat - zw[:, -1].float()).square().mean(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def surprise_reference(errors: np.ndarray) -> dict[str, Any]:
    """The held-out distribution of one-step errors that a surprise is scored against: the mean and
    std of their log (the monitor's score is a z-score of the log error) and a few quantiles."""
    errors = np.asarray(errors, dtype=np.float64)
    errors = errors[np.isfinite(errors)]
    if len(errors) < 10:
        raise ValueError(f"{len(errors)} held-out one-step errors: too few to score surprise against; "
                         "hold out more episodes (data.val_fraction)")
    log = np.log(np.maximum(errors, 1e-12))
    return {"n": int(len(errors)), "log_mean": float(log.mean()), "log_std": float(max(log.std(), 1e-6)),
            "quantiles": {str(q): float(np.quantile(errors, q / 100)) for q in (50, 90, 99, 99.9)},
            "note": "one-step latent prediction error (mean squared per dimension) on held-out episodes"}


COLLAPSED_STD = 1e-3   # held-out per-dim std (mean) below this: the encoder ignores its input
SHRUNK_STD = 0.1       # below this SIGReg is not holding the latents near unit scale


def collapse_note(metrics: dict[str, float]) -> str:
    """A warning for the validation line when the latents collapse or shrink. The effective rank is
    blind to scale (latents can shrink while keeping a high rank, and planning then fails), so the
    std decides."""
    std = metrics["std_mean"]
    if std < COLLAPSED_STD:
        return " COLLAPSED: latents ~constant (raise sigreg_weight)"
    if std < SHRUNK_STD:
        return f" SHRINKING: latent std {std:.3f}, SIGReg keeps it near 1 (raise sigreg_weight)"
    return ""
