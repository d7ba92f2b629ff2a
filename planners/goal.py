"""What MPCController asks of a goal energy (`GoalEnergyLike`), and the energy of candidates whose
first actions are already committed to the robot (`CommittedPrefix`, async mode).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from worldmodel.planners.graph import StaticBuffers


class GoalEnergyLike(Protocol):
    """What the controller needs from a world model. Arrays always carry a leading batch axis B.
    Optional: an int attribute `max_history`, the most frames the model reads (the controller refuses
    a longer `history`)."""

    def set_goal(self, goal_obs: np.ndarray) -> None:
        """goal_obs (B, *obs_shape), same layout and dtype as the observations."""

    def set_observation(self, obs_history: np.ndarray, past_actions: np.ndarray) -> None:
        """obs_history (B, T, *obs_shape), 1 <= T <= history, oldest first, current last;
        past_actions (B, T-1, frameskip*A) float32 raw chunks executed between those frames."""

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (B, S, H, frameskip*A) raw, on the controller's device -> costs (B, S)."""


class CommittedPrefix:
    """The energy of candidates whose first k env actions are replaced by committed ones (async
    mode: actions already queued for the robot while the next plan is made). One buffer per shape,
    overwritten in place, so a captured CUDA graph sees each new prefix."""

    def __init__(self, energy: GoalEnergyLike, frameskip: int, device, dtype) -> None:
        self.energy, self.fs, self.device, self.dtype = energy, frameskip, device, dtype
        self._buffers = StaticBuffers()
        self.prefix: torch.Tensor | None = None

    def set(self, committed: np.ndarray) -> None:
        """committed (B, k, A) env actions, raw."""
        x = torch.as_tensor(committed, dtype=self.dtype, device=self.device)
        self.prefix = self._buffers.keep(("prefix",), x)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        B, S, H, C = actions.shape                                     # C = frameskip * A
        k, A = self.prefix.shape[1], C // self.fs
        steps = actions.reshape(B, S, H * self.fs, A)                   # (B, S, H*fs, A)
        fixed = self.prefix[:, None].to(actions.dtype).expand(B, S, k, A)
        steps = torch.cat([fixed, steps[:, :, k:]], dim=2)              # (B, S, H*fs, A)
        return self.energy(steps.reshape(B, S, H, C))
