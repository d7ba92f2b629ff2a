"""Surprise monitor: has the world left what the model knows?

`SurpriseMonitor(energy, reference)` wraps a goal energy (it is one itself, so MPCController takes it
in the energy's place). Each time the controller hands it a new observation history, that is after
each executed chunk with receding_horizon=1 (after each executed plan otherwise), it asks the energy
for the model's one-step prediction error of the newest frame (`prediction_error()`: what the model
predicted the executed chunk would lead to, against what it saw) and scores it against the model's
held-out errors (`reference`: worldmodel.training.validation.surprise_reference, measured when
`wm train` ends and stored in best.pt, also in a `wm distill` policy file;
goal_policy.surprise_reference_of reads either). The reference was measured with a full
history before the scored frame, so a frame is scored once the controller has the energy's
`max_history` frames (from the model's history - 1 chunks into an episode):

    score = (log(error) - reference log_mean) / reference log_std        (held-out standard deviations)

A score above `threshold` is an alarm: counted, passed to `on_surprise(event)` (slow the robot down,
log, ask for help) and, with `stop=True`, raised as `Surprised` from the controller's `act()` (the
controller stays usable). `stats()` (merged into MPCController.stats()) reports the checks, alarms,
the last and the largest score. The energy's other attributes (propose, max_history, ...) pass through.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch


@dataclass
class SurpriseEvent:
    check: int                  # observations scored since the goal was set (0-based)
    scores: np.ndarray          # (B,) each batch row's score (held-out standard deviations of the log error)
    errors: np.ndarray          # (B,) the one-step errors (mean squared per latent dimension)
    rows: np.ndarray            # batch rows above the threshold


class Surprised(RuntimeError):
    """Raised from the controller's act() by a SurpriseMonitor(stop=True) alarm; `.event` says where."""

    def __init__(self, event: SurpriseEvent, threshold: float) -> None:
        super().__init__(f"surprise {float(event.scores.max()):.1f} > threshold {threshold} at check {event.check}: "
                         "the model mispredicted what the last chunk did (the world left what it knows); stop or "
                         "slow the robot, then reset(goal) to go on")
        self.event = event


def check_reference(reference: Any) -> dict:
    """A reference dict with finite log_mean and log_std > 0 (what surprise_reference writes)."""
    ok = isinstance(reference, dict) and all(
        isinstance(reference.get(k), (int, float)) and math.isfinite(reference[k]) for k in ("log_mean", "log_std"))
    if not ok or reference["log_std"] <= 0:
        raise ValueError("reference must be the held-out error statistics of the model (log_mean, log_std > 0): "
                         "worldmodel.model.goal_policy.surprise_reference_of(<best.pt>, model)")
    return reference


class SurpriseMonitor:
    """A goal energy that scores every new observation's one-step prediction error (see the module)."""

    def __init__(self, energy: Any, reference: dict, threshold: float = 4.0,
                 on_surprise: Callable[[SurpriseEvent], Any] | None = None, stop: bool = False) -> None:
        if not callable(getattr(energy, "prediction_error", None)):
            raise TypeError("the energy offers no prediction_error(); wrap a worldmodel.model.energy.GoalEnergy")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0 \
                or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number > 0 (held-out standard deviations of the log "
                             f"error), got {threshold!r}; e.g. threshold=4")
        if on_surprise is not None and not callable(on_surprise):
            raise TypeError("on_surprise must be callable(event) or None")
        self.energy, self.reference = energy, check_reference(reference)
        self.threshold, self.on_surprise, self.stop = float(threshold), on_surprise, stop
        self.scores: list[np.ndarray] = []      # (B,) per check since the goal was set
        self.alarms = 0
        self._goal: np.ndarray | None = None

    def __getattr__(self, name: str) -> Any:   # propose, max_history, static, compiled, ... of the energy
        if name == "energy":
            raise AttributeError(name)
        return getattr(self.energy, name)

    def set_goal(self, goal_obs: Any) -> None:
        self.energy.set_goal(goal_obs)
        self.scores, self.alarms = [], 0
        self._goal = np.asarray(goal_obs)                   # (B, *obs_shape)

    def _warmup(self, obs_history: Any) -> bool:
        """MPCController.warmup()'s fake history (the goal repeated): planned on, never scored."""
        goal, obs = self._goal, np.asarray(obs_history)
        return goal is not None and obs.shape[0] == goal.shape[0] and bool((obs == goal[:, None]).all())

    def score(self, errors: torch.Tensor) -> np.ndarray:
        """(B,) errors -> (B,) scores in held-out standard deviations of the log error."""
        e = errors.detach().double().clamp_min(1e-12).log().cpu().numpy()
        return (e - self.reference["log_mean"]) / self.reference["log_std"]

    def set_observation(self, obs_history: Any, past_actions: Any) -> None:
        self.energy.set_observation(obs_history, past_actions)
        errors = self.energy.prediction_error()             # (B,) or None (a single frame: nothing to score)
        full = getattr(self.energy, "max_history", None)     # the reference's context: a full history
        if errors is None or self._warmup(obs_history) or (full is not None and len(obs_history[0]) < full):
            return
        scores = self.score(errors)
        self.scores.append(scores)
        rows = np.flatnonzero(scores > self.threshold)
        if len(rows):
            self.alarms += 1
            event = SurpriseEvent(len(self.scores) - 1, scores, errors.detach().cpu().numpy(), rows)
            if self.on_surprise is not None:
                self.on_surprise(event)
            if self.stop:
                raise Surprised(event, self.threshold)

    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        return self.energy(actions)

    def surprise_stats(self) -> dict:
        """Checks, alarms, the last and the largest score since the goal was set (NaN before a check)."""
        last = float(self.scores[-1].max()) if self.scores else float("nan")
        top = float(max(s.max() for s in self.scores)) if self.scores else float("nan")
        return {"surprise_checks": len(self.scores), "surprise_alarms": self.alarms, "surprise_last": last,
                "surprise_max": top}
