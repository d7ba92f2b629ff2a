"""A goal-conditioned policy distilled from a frozen world model's latents, and its checkpoint.

`GoalPolicy` maps the last `history` observed latents (spaced one chunk apart, oldest first) and a
goal latent to a plan of `horizon` action chunks in raw env units: inverse dynamics over the world
model's latent space, trained by worldmodel/training/distill.py (`wm distill`) on the model's own
training episodes with goals relabelled from later frames. One forward pass per decision: it acts
alone (planner=policy), seeds CEM / iCEM (planner.proposal=true) or stands in when a plan has no
time left.

Its checkpoint (`save_policy` / `load_policy`) records a fingerprint of the world model it was
distilled from: loading it with another model is refused, as are non-finite weights. It also
carries the world model's held-out one-step prediction errors (the surprise monitor's reference).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from worldmodel.io import write_atomic
from worldmodel.model.checkpoint import FORMAT, load_checkpoint, non_finite, read_mapped

POLICY_FORMAT = "worldmodel-goal-policy"
POLICY_VERSION = 1


@dataclass
class PolicyConfig:
    latent_dim: int
    chunk_dim: int           # frameskip x action_dim: one chunk's width
    history: int             # observed latents read (the world model's history)
    horizon: int = 5         # chunks planned per call (a shorter horizon takes the first ones)
    hidden: int = 512
    depth: int = 3


class GoalPolicy(nn.Module):
    """(z_hist (B, h, D), z_goal (B, D)) -> chunks (B, horizon, chunk) raw. A history shorter than
    `history` (an episode's start) is padded with its oldest latent; actions are predicted in the
    world model's normalised units and returned raw."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        width = (cfg.history + 2) * cfg.latent_dim          # history, goal, goal - current
        layers: list[nn.Module] = [nn.LayerNorm(width)]
        for i in range(cfg.depth):
            layers += [nn.Linear(width if i == 0 else cfg.hidden, cfg.hidden), nn.GELU()]
        layers.append(nn.Linear(cfg.hidden, cfg.horizon * cfg.chunk_dim))
        self.net = nn.Sequential(*layers)
        self.register_buffer("action_mean", torch.zeros(cfg.chunk_dim))
        self.register_buffer("action_std", torch.ones(cfg.chunk_dim))

    def features(self, z_hist: Tensor, z_goal: Tensor) -> Tensor:
        """(B, h, D), (B, D) -> (B, (history + 2) * D)."""
        h, n = z_hist.shape[1], self.cfg.history
        if z_hist.dim() != 3 or z_goal.dim() != 2 or z_hist.shape[-1] != self.cfg.latent_dim:
            raise ValueError(f"GoalPolicy needs z_hist (B, h, {self.cfg.latent_dim}) and z_goal (B, "
                             f"{self.cfg.latent_dim}), got {tuple(z_hist.shape)} and {tuple(z_goal.shape)}")
        if h < n:
            z_hist = torch.cat([z_hist[:, :1].expand(-1, n - h, -1), z_hist], 1)   # (B, n, D)
        z_hist = z_hist[:, -n:].float()                                             # (B, n, D)
        z_goal = z_goal.float()
        return torch.cat([z_hist.flatten(1), z_goal, z_goal - z_hist[:, -1]], 1)     # (B, (n+2)*D)

    def forward_normalised(self, z_hist: Tensor, z_goal: Tensor) -> Tensor:
        """Actions in the world model's normalised units (B, horizon, chunk) (what training fits)."""
        return self.net(self.features(z_hist, z_goal)).unflatten(1, (self.cfg.horizon, self.cfg.chunk_dim))

    def forward(self, z_hist: Tensor, z_goal: Tensor, horizon: int | None = None) -> Tensor:
        horizon = self.cfg.horizon if horizon is None else horizon
        out = self.forward_normalised(z_hist, z_goal) * self.action_std + self.action_mean   # (B, H_p, chunk)
        if horizon > self.cfg.horizon:       # beyond the distilled horizon: hold the last chunk
            out = torch.cat([out, out[:, -1:].expand(-1, horizon - self.cfg.horizon, -1)], 1)
        return out[:, :horizon]                                                     # (B, horizon, chunk)


def model_fingerprint(model: nn.Module | dict) -> str:
    """sha256 of a world model's weights (names, shapes and float32 values; a model or its state
    dict): what a policy was distilled from, checked when it is loaded beside a model."""
    h = hashlib.sha256()
    state = model if isinstance(model, dict) else model.state_dict()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_policy(path: str | os.PathLike, policy: GoalPolicy, world_model: nn.Module,
                extra: dict | None = None) -> Path:
    """Atomically write the policy, its config, the world model's fingerprint and `extra`."""
    payload = {"format": POLICY_FORMAT, "version": POLICY_VERSION, "config": asdict(policy.cfg),
               "policy": {k: v.detach().cpu() for k, v in policy.state_dict().items()},
               "world_model": model_fingerprint(world_model), "extra": dict(extra or {})}
    return write_atomic(path, lambda f: torch.save(payload, f), "free space, then re-run wm distill")


def read_policy_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checked payload of a `wm distill` policy file (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no policy file {path}; distill one: wm distill checkpoint=<best.pt> out=<dir>")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise ValueError(f"{path} is not a readable policy file; re-run wm distill") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != POLICY_FORMAT:
        raise ValueError(f"{path} is not a `wm distill` policy (a world model checkpoint goes in checkpoint=, "
                         f"its policy.pt in distilled=)")
    if ckpt.get("version") != POLICY_VERSION:
        raise ValueError(f"{path} has policy format version {ckpt.get('version')!r}, this code reads "
                         f"{POLICY_VERSION}; re-run wm distill")
    bad = non_finite(ckpt["policy"])
    if bad:
        raise ValueError(f"{path} holds NaN/Inf weights ({', '.join(bad[:3])}); re-run wm distill (a lower lr=)")
    return ckpt


def _matching(path: str | os.PathLike, world_model: nn.Module) -> dict[str, Any]:
    ckpt = read_policy_file(path)
    if ckpt["world_model"] != model_fingerprint(world_model):
        raise ValueError(f"{path} was distilled from another world model than this checkpoint's; distill one "
                         f"for it: wm distill checkpoint=<this best.pt> out=<dir>")
    return ckpt


def surprise_reference_of(path: str | os.PathLike, world_model: nn.Module) -> dict[str, Any]:
    """The held-out one-step errors of `world_model`, the reference of planners.surprise.SurpriseMonitor:
    from its checkpoint (`wm train` stores them in best.pt) or from a `wm distill` policy.pt; refused
    for another model's file."""
    try:
        head = read_mapped(path)
    except Exception:                      # not a torch file: read_policy_file says what is wrong
        head = None
    if not (isinstance(head, dict) and head.get("format") == FORMAT):
        return _matching(path, world_model)["extra"]["surprise"]
    ckpt = load_checkpoint(path)
    if model_fingerprint(ckpt["model"]) != model_fingerprint(world_model):
        raise ValueError(f"{path} holds other weights than this model; pass the checkpoint the model was loaded from")
    reference = (ckpt.get("extra") or {}).get("surprise")
    if reference is None:
        raise ValueError(f"{path} holds no surprise reference (trained before wm train stored one, or without "
                         "held-out episodes): retrain with data.val_fraction > 0, or read it from "
                         "`wm distill checkpoint=<it> out=<dir>`'s policy.pt")
    return reference


def load_policy(path: str | os.PathLike, world_model: nn.Module) -> GoalPolicy:
    """The policy at `path`, in eval mode on the world model's device; refused when it was
    distilled from another world model than `world_model`."""
    ckpt = _matching(path, world_model)
    policy = GoalPolicy(PolicyConfig(**ckpt["config"]))
    policy.load_state_dict(ckpt["policy"])
    return policy.to(next(world_model.parameters()).device).eval()
