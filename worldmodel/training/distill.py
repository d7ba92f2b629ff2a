"""`wm distill`: a goal-conditioned policy trained on a frozen world model's latents.

Every frame of the model's training episodes (and of its held-out ones, for scoring) is encoded
once by the frozen encoder. The policy (worldmodel/model/goal_policy.py) then learns inverse
dynamics in latent space: from the latents of the current frame and the `history - 1` frames
before it (one chunk apart) and the latent of a goal frame `goal_min .. goal_max` env steps later
in the same episode (hindsight relabelling), the recorded action chunks that followed, in the world
model's normalised action units (masked past the episode's end). The held-out episodes score it
against predicting the mean action and give the surprise monitor its reference: the model's
one-step prediction errors there (validation.one_step_errors). Writes out/policy.pt and
out/results.json.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from worldmodel.model.goal_policy import GoalPolicy, PolicyConfig, save_policy
from worldmodel.training.distill_config import DistillConfig

OUTPUTS = {"config.json", "policy.pt", "results.json"}


class Relabeller:
    """Random (history latents, goal latent, action chunks, mask) samples from encoded episodes."""

    def __init__(self, z: torch.Tensor, action: np.ndarray, ep_len: np.ndarray, ep_offset: np.ndarray,
                 model_cfg: Any, horizon: int, goal_min: int, goal_max: int, normalise: Any) -> None:
        self.z, self.fs, self.h, self.H = z, model_cfg.frameskip, model_cfg.history, horizon
        self.goal_min, self.goal_max = goal_min, goal_max
        ok = ep_len > goal_min
        if not ok.any():
            raise ValueError(f"no episode is longer than goal_min={goal_min} steps; lower goal_min=")
        self.len, self.off = ep_len[ok].astype(np.int64), ep_offset[ok].astype(np.int64)
        steps = self.H * self.fs
        a = np.nan_to_num(action.astype(np.float32))
        self.action = np.concatenate([a, np.zeros((steps, a.shape[1]), np.float32)])   # (N + steps, A)
        self.valid = np.concatenate([np.isfinite(action).all(1), np.zeros(steps, bool)])
        self.weights = (self.len - goal_min) / (self.len - goal_min).sum()
        self.normalise = normalise

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        """z_hist (n, h, D), z_goal (n, D), target (n, H, chunk) normalised, mask (n, H, chunk)."""
        e = rng.choice(len(self.len), n, p=self.weights)
        L, o = self.len[e], self.off[e]
        t = (rng.random(n) * (L - self.goal_min)).astype(np.int64)                # 0 <= t < L - goal_min
        k_max = np.minimum(self.goal_max, L - 1 - t)
        k = self.goal_min + (rng.random(n) * (k_max - self.goal_min + 1)).astype(np.int64)
        back = np.arange(self.h - 1, -1, -1) * self.fs                           # (h,) oldest first
        hist = o[:, None] + np.maximum(t[:, None] - back, 0)                      # (n, h): the start repeats
        steps = np.arange(self.H * self.fs)
        arow = o[:, None] + t[:, None] + steps                                    # (n, H*fs)
        inside = (t[:, None] + steps) < (L[:, None] - 1)                          # an action with a next frame
        mask = inside & self.valid[arow]
        dev = self.z.device
        target = self.normalise(torch.from_numpy(self.action[arow].reshape(n, self.H, -1)).to(dev))
        m = torch.from_numpy(np.repeat(mask, self.action.shape[1], axis=1).reshape(n, self.H, -1)).to(dev)
        return (self.z[torch.from_numpy(hist)], self.z[torch.from_numpy(o + t + k)], target, m.float())


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - target).square() * mask).sum() / mask.sum().clamp_min(1.0)


def load_split(path: str, episodes: np.ndarray, limit: int | None) -> Any:
    """Pixels and actions of the split's episodes (the first `limit` of them)."""
    from worldmodel.data.dataset import load_dataset

    return load_dataset(path, columns=("pixels", "action"), episodes=episodes.tolist()[:limit])


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """Train the policy; write out/policy.pt and out/results.json; return the results."""
    from worldmodel.evaluation.tasks import training_episodes
    from worldmodel.io import OutputDir, write_json_atomic
    from worldmodel.machine import resolve_device
    from worldmodel.model.checkpoint import load_checkpoint
    from worldmodel.model.world_model import trained_from_loaded
    from worldmodel.training.validation import encode_rows, one_step_errors, surprise_reference

    t0 = time.perf_counter()
    device = resolve_device(cfg.device, 0)
    out = OutputDir(cfg.out, "distill", OUTPUTS, cfg.overwrite).prepare()
    ckpt = load_checkpoint(cfg.checkpoint, map_location=device)
    model, meta, env_name = trained_from_loaded(ckpt, device, None, str(cfg.checkpoint))
    for p in model.parameters():
        p.requires_grad_(False)
    train_cfg = (ckpt.get("extra") or {}).get("config") or {}
    path, train_eps, val_eps = training_episodes(train_cfg, model.cfg.history, model.cfg.frameskip)
    if val_eps is None or len(val_eps) == 0:
        raise ValueError(f"{cfg.checkpoint} records no held-out episodes of its data to score the policy and the "
                         "surprise reference on; retrain with data.val_fraction > 0")
    train_ds, val_ds = load_split(path, train_eps, cfg.episodes), load_split(path, val_eps, None)
    mean, std = model.action_mean, model.action_std                         # (chunk,)
    normalise = lambda a: (a - mean) / std                                  # noqa: E731
    z_train = encode_rows(model, train_ds.pixels, cfg.encode_batch)          # (N, D)
    z_val = encode_rows(model, val_ds.pixels, cfg.encode_batch)              # (M, D)
    common = (model.cfg, cfg.horizon, cfg.goal_min, cfg.goal_max, normalise)
    train = Relabeller(z_train, train_ds.action, train_ds.ep_len, train_ds.ep_offset, *common)
    val = Relabeller(z_val, val_ds.action, val_ds.ep_len, val_ds.ep_offset, *common)
    torch.manual_seed(cfg.seed)
    policy = GoalPolicy(PolicyConfig(model.cfg.latent_dim, model.cfg.chunk_dim, model.cfg.history, cfg.horizon,
                                     cfg.hidden, cfg.depth)).to(device)
    policy.action_mean.copy_(mean)
    policy.action_std.copy_(std)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    rng = np.random.default_rng(cfg.seed)
    bar = None
    if cfg.progress:
        from tqdm import tqdm
        bar = tqdm(total=cfg.steps, desc="distill", unit="step")
    losses = []
    for step in range(cfg.steps):
        zh, zg, target, mask = train.sample(cfg.batch_size, rng)
        loss = masked_mse(policy.forward_normalised(zh, zg), target, mask)
        value = loss.item()                 # host sync, once per step: the loss is checked and logged
        if not math.isfinite(value):
            raise ValueError(f"distill: the loss became {value} at step {step}; lower lr= (now {cfg.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(value)
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    if bar is not None:
        bar.close()
    policy.eval()
    with torch.no_grad():
        zh, zg, target, mask = val.sample(cfg.val_samples, np.random.default_rng([cfg.seed, 1]))
        val_mse = float(masked_mse(policy.forward_normalised(zh, zg), target, mask))
        val_mean = float(masked_mse(torch.zeros_like(target), target, mask))   # the mean action, normalised
        errors = one_step_errors(model, z_val, val_ds.action, val_ds.ep_len, val_ds.ep_offset)
    reference = surprise_reference(errors)
    results = {"checkpoint": str(cfg.checkpoint), "env": env_name, "data": str(path),
               "train_episodes": int(train_ds.num_episodes), "val_episodes": int(val_ds.num_episodes),
               "train_loss_last100": float(np.mean(losses[-100:])), "val_mse": val_mse,
               "val_mse_mean_action": val_mean, "val_ratio": val_mse / max(val_mean, 1e-12),
               "surprise_reference": reference, "parameters": sum(p.numel() for p in policy.parameters()),
               "wall_s": time.perf_counter() - t0}
    path_out = out.open(cfg)
    save_policy(path_out / "policy.pt", policy, model, {"surprise": reference, "distill": results})
    write_json_atomic(path_out / "results.json", results)
    print(f"wm distill: held-out action error {val_mse:.3f} against {val_mean:.3f} for the mean action "
          f"(ratio {results['val_ratio']:.2f}); policy in {path_out / 'policy.pt'}")
    return results
