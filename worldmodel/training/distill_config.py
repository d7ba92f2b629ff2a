"""Typed config of `wm distill` (no torch): a goal-conditioned policy from a trained world model."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class DistillConfig:
    checkpoint: str = ""               # a `wm train` best.pt / last.pt: the frozen world model
    out: str = "runs/distill"          # writes policy.pt (the policy, beside the model) and results.json
    horizon: int = 5                   # action chunks the policy plans per call (wm eval's horizon)
    goal_min: int = 1                  # relabelled goals: a frame goal_min .. goal_max env steps later in
    goal_max: int = 50                 # the same episode (wm eval's goals are goal_offset=25 steps ahead)
    steps: int = 1000                  # optimisation steps
    batch_size: int = 256
    lr: float = 1e-3                   # AdamW, cosine decay to 0
    weight_decay: float = 1e-4
    hidden: int = 512                  # MLP width
    depth: int = 3                     # hidden layers
    episodes: int | None = None        # the first N episodes of the model's training split (null: all)
    encode_batch: int = 256            # frames encoded at once (the world model stays frozen)
    val_samples: int = 4096            # held-out (latent, goal) pairs scored at the end
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from worldmodel.model.checkpoint import require_checkpoint

        require_checkpoint(self.checkpoint, "distill")
        for k in ("horizon", "goal_min", "goal_max", "steps", "batch_size", "hidden", "depth", "encode_batch",
                  "val_samples"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.goal_max < self.goal_min:
            raise ValueError(f"goal_max ({self.goal_max}) must be >= goal_min ({self.goal_min})")
        for k in ("lr", "weight_decay"):
            v = getattr(self, k)
            if not math.isfinite(v) or v < 0 or (k == "lr" and v == 0):
                raise ValueError(f"{k} must be a finite number {'> 0' if k == 'lr' else '>= 0'}, got {v}")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"episodes must be >= 1 or null (all), got {self.episodes}")
