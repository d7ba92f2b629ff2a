"""Plans proposed by the energy itself: `planner=policy`, and the proposal that seeds CEM / iCEM.

An energy may offer `propose(horizon) -> (B, H, A)` raw action sequences (the `Proposing`
protocol): worldmodel.model.energy.GoalEnergy does when it holds a policy distilled from its world
model. `PolicyPlanner` returns that proposal (one forward pass, and one energy call that scores it) or,
with samples > 1, the cheapest of the proposal and samples - 1 noisy copies of it. CEM and iCEM
with `proposal=True` (or the presets' None, whenever the energy holds a policy) start their sampling
mean at it, score it in their first iteration and, when the deadline has passed before their first
iteration, return it (scored once) as the plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from worldmodel.planners.base import (BestSoFar, Bounds, Deadline, Energy, Planner, PlanResult, Problem, finish,
                                      register_planner)


@runtime_checkable
class Proposing(Protocol):
    def propose(self, horizon: int) -> torch.Tensor:
        """(B, horizon, A) raw action sequences toward the goal, from the energy's current observation."""


def _proposing(energy: Energy) -> Proposing | None:
    """The energy that proposes, looked for through the controller's CommittedPrefix wrapper; or None."""
    for e in (energy, getattr(energy, "energy", None)):
        if callable(getattr(e, "propose", None)):
            return e
    return None


def proposer(energy: Energy, who: str) -> Proposing:
    """The energy that proposes (through the controller's CommittedPrefix wrapper too)."""
    e = _proposing(energy)
    if e is None:
        raise TypeError(f"{who}: the energy proposes no plan (no propose(horizon)); give it a distilled policy: "
                        "GoalEnergy(model, policy=load_policy(path, model)) (wm eval distilled=<policy.pt>)")
    return e


def wants_proposal(proposal: bool | None, energy: Energy) -> bool:
    """CEM / iCEM's `proposal` setting against this energy: True and False as given; None (the presets')
    seeds whenever the energy has a proposal to offer (a GoalEnergy holding a distilled policy)."""
    if proposal is not None:
        return proposal
    e = _proposing(energy)
    return e is not None and getattr(e, "policy", True) is not None


def proposal_unit(energy: Energy, p: Problem, who: str) -> torch.Tensor:
    """The energy's proposal (B, H, A) in the problem's unit coordinates, checked."""
    if p.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"{who}: a proposal is not captured in a CUDA graph (its inputs move); plan without "
                           "cuda_graph, or without the proposal")
    x = proposer(energy, who).propose(p.H)
    return p.to_unit(p._check(x, (p.B, p.H, p.A), "the proposal"))


def seed_with_proposal(energy: Energy, p: Problem, mean: torch.Tensor, warm: torch.Tensor | None,
                       who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """CEM / iCEM seeded: the sampling mean becomes the proposal (B, H, A) unit, and the mean they
    would have started at (the shifted previous plan, or the box centre) joins the warm candidates."""
    kept = mean[:, None]                                                   # (B, 1, H, A)
    return proposal_unit(energy, p, who), kept if warm is None else torch.cat([kept, warm], 1)


def late_fallback(energy: Energy, p: Problem, proposal: torch.Tensor, clock: Deadline,
                  planned: int) -> PlanResult | None:
    """The proposal, scored once, as the plan when the deadline has already passed before the first
    iteration (iterations = 0, deadline_missed); None while there is time."""
    if clock.limit is None or clock.elapsed() < clock.limit:
        return None
    best = BestSoFar(p)
    best.update(p.evaluate(energy, proposal[:, None]), proposal[:, None])
    return finish(p, best, proposal, 0, planned, clock)


@register_planner("policy")
@dataclass
class PolicyPlanner(Planner):
    """The energy's proposal (a distilled policy's plan); samples > 1 also scores noisy copies of it
    and keeps the cheapest."""

    samples: int = 1             # 1: the proposal alone (scored once); S > 1: it and S - 1 noisy copies
    iterations: int = 1          # one pass (the proposal is not refined)
    noise: float = 0.1           # the copies' std, in unit coordinates (1 = the bound half-range)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations != 1:
            raise ValueError(f"policy: iterations must be 1 (one proposal per decision), got {self.iterations}; "
                             "to refine the proposal use planner=cem planner.proposal=true")
        if not self.noise >= 0:
            raise ValueError(f"policy: noise must be >= 0, got {self.noise}")

    @torch.no_grad()
    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        p = Problem(bounds, horizon, batch, "policy")
        clock = Deadline(deadline_s, p.device)
        mean = proposal_unit(energy, p, "policy")                          # (B, H, A)
        noise = torch.randn(p.B, self.samples, p.H, p.A, generator=self.generator(p.device),
                            device=p.device, dtype=p.dtype)                  # (B, S, H, A)
        u = p.candidates(mean, torch.full_like(mean, self.noise), noise, None, True)   # (B, S, H, A): u[:, 0] = mean
        best = BestSoFar(p)
        best.update(p.evaluate(energy, u), u, self.record_history)
        return finish(p, best, mean, 1, 1, clock)
