"""The goal energy of several world models at once: the mean of their GoalEnergy costs.

Models trained on the same data with different seeds err differently; a plan that only one of them
believes reaches the goal (a model error the planner found and exploited) costs more under the
mean. Per candidate, mean_m ||z_m - g_m||^2 is each member's distance to its own goal latent, so
the members need not share a latent space; they must read the same observations and actions
(`check_members`). Each member rolls its own candidates forward, so a plan costs about as many
times more as there are members.

It is a GoalEnergyLike (planners/goal.py): MPCController, every planner, `wm eval ensemble=[...]`
and the surprise monitor take it where they take a GoalEnergy.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import Tensor

from worldmodel.model.energy import GoalEnergy

# What members must share: they see the same frames and the same action chunks.
SHARED = ("image_size", "action_dim", "frameskip")


def check_members(cfgs: Sequence[Any], names: Sequence[str]) -> None:
    """Refuse models that could not plan together: different image sizes, action widths or chunks."""
    first = cfgs[0]
    for cfg, name in zip(cfgs[1:], names[1:]):
        for k in SHARED:
            if getattr(cfg, k) != getattr(first, k):
                raise ValueError(f"ensemble member {name} has model.{k}={getattr(cfg, k)} but {names[0]} has "
                                 f"{getattr(first, k)}: an ensemble's models must see the same frames and actions "
                                 "(train them on the same data with different seed=)")


class EnsembleEnergy:
    """cost(actions) = mean over members of GoalEnergy(member)(actions), (B, S).

    `members`: GoalEnergy objects (each with its own dtype, compile, terms); build them with
    `EnsembleEnergy.of(models, **GoalEnergy kwargs)`. A distilled policy, if any, belongs to the
    first member (the one it was distilled from); `propose` asks it."""

    def __init__(self, members: Sequence[GoalEnergy]):
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member energy")
        check_members([m.model.cfg for m in members], [f"#{i}" for i in range(len(members))])
        self.members = list(members)
        # the controller may pass at most this many frames: what every member reads
        self.max_history = min(m.max_history for m in self.members)
        self.static = all(m.static for m in self.members)
        self.policy = self.members[0].policy

    @classmethod
    def of(cls, models: Sequence[Any], policy: Any = None, **kwargs: Any) -> "EnsembleEnergy":
        """One GoalEnergy per model with the same settings (kwargs); `policy` goes to the first. Each
        member gets its own copy of the energy terms (a term binds to its member's model: encodings)."""
        terms = kwargs.pop("terms", ())
        return cls([GoalEnergy(m, policy=policy if i == 0 else None, terms=[copy.copy(t) for t in terms], **kwargs)
                    for i, m in enumerate(models)])

    @property
    def compiled(self) -> bool:
        return all(m.compiled for m in self.members)

    @property
    def compile_note(self) -> str | None:
        return next((m.compile_note for m in self.members if m.compile_note), None)

    def set_goal(self, goal_pixels: Tensor) -> None:
        for m in self.members:
            m.set_goal(goal_pixels)

    def set_observation(self, obs_pixels: Tensor, past_actions: Tensor | None = None) -> None:
        for m in self.members:
            m.set_observation(obs_pixels, past_actions)

    def __call__(self, actions: Tensor) -> Tensor:
        """actions (B, S, Hz, chunk) raw env units -> costs (B, S), the members' mean."""
        cost = self.members[0](actions)                    # (B, S)
        for m in self.members[1:]:
            cost = cost + m(actions)                       # (B, S)
        return cost / len(self.members)

    def propose(self, horizon: int) -> Tensor:
        """The first member's distilled policy's plan (B, horizon, chunk)."""
        return self.members[0].propose(horizon)

    @torch.no_grad()
    def prediction_error(self) -> Tensor | None:
        """(B,) the members' mean one-step error on the newest observed frame (None with one frame)."""
        errs = [m.prediction_error() for m in self.members]
        return None if errs[0] is None else torch.stack(errs).mean(0)
