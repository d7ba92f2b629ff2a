"""Cross-entropy method (CEM), the planner LeWM and DINO-WM use.

Each iteration samples S Gaussian candidates around a mean, keeps the E cheapest (elites) and
refits the mean and standard deviation to them. Defaults are LeWM's planning settings: 300
samples, 30 iterations, 30 elites, initial std 1. Standard deviations are in *unit* coordinates
(1 = the bound half-range, see planners.base), the analogue of LeWM's std 1 on normalised
actions. Warm start (shifting the previous plan) is the controller's job: it passes init_mean.

proposal=True starts the mean at the energy's proposal (a distilled policy's plan, planners/policy.py)
with std `proposal_std`, and returns that proposal when the deadline passed before the first iteration.

Everything inside the loop stays on the device: sampling, clipping, top-k, gather, refit and the
best-so-far bookkeeping. The only host sync is the optional anytime-deadline check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worldmodel.planners.base import (BestSoFar, Bounds, Deadline, Energy, Planner, PlanResult, Problem,
                           finish, register_planner, take)
from worldmodel.planners.policy import late_fallback, seed_with_proposal, wants_proposal


@register_planner("cem")
@dataclass
class CEM(Planner):
    samples: int = 300
    iterations: int = 30
    elites: int = 30
    init_std: float = 1.0     # unit coordinates: 1 = bound half-range
    min_std: float = 0.05     # floor so the search never collapses to a point early
    momentum: float = 0.0     # new mean = momentum * old + (1 - momentum) * elite mean
    keep_mean: bool = True    # candidate 0 is the current mean: the warm start is always scored
    proposal: bool | None = None  # start at the energy's proposal (a distilled policy's plan: wm eval distilled=);
                                  # None: whenever the energy has one, False: never, True: required
    proposal_std: float = 0.5  # the initial std around a proposal (unit coordinates)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.elites <= self.samples:
            raise ValueError(f"cem: need 2 <= elites <= samples, got elites={self.elites}, "
                             f"samples={self.samples}")
        if self.init_std <= 0 or self.proposal_std <= 0 or self.min_std < 0 or not 0 <= self.momentum < 1:
            raise ValueError("cem: need init_std > 0, proposal_std > 0, min_std >= 0 and 0 <= momentum < 1")

    @torch.no_grad()
    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        p = Problem(bounds, horizon, batch, "cem")
        clock = Deadline(deadline_s, p.device)
        gen = self.generator(p.device)
        B, S, H, A = p.B, self.samples, p.H, p.A
        mean = p.init_mean(init_mean)                                       # (B, H, A)
        std = torch.full_like(mean, self.init_std)                          # (B, H, A)
        warm = p.init_elites(init_elites)                                   # (B, K, H, A) | None
        if wants_proposal(self.proposal, energy):   # the previous mean joins the warm candidates, the proposal leads
            mean, warm = seed_with_proposal(energy, p, mean, warm, "cem")        # (B, H, A), (B, K+1, H, A)
            std = torch.full_like(mean, self.proposal_std)                  # (B, H, A)
            if (late := late_fallback(energy, p, mean, clock, self.iterations)) is not None:
                return late                # no time left for one iteration: the proposal
        best = BestSoFar(p)
        elites = None
        it = 0
        for it in range(1, self.iterations + 1):
            noise = torch.randn(B, S, H, A, generator=gen, device=p.device, dtype=p.dtype)
            u = p.candidates(mean, std, noise, warm if it == 1 else None, self.keep_mean)  # (B, S, H, A)
            costs = p.evaluate(energy, u)                                   # (B, S)
            best.update(costs, u, self.record_history)
            idx = costs.topk(self.elites, dim=1, largest=False).indices     # (B, E)
            elites = take(u, idx)                                           # (B, E, H, A)
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(1)  # (B, H, A)
            std = elites.std(1).clamp_(min=self.min_std)                    # (B, H, A)
            if it < self.iterations and clock.expired(it):  # the loop's only host sync (optional)
                break
        return finish(p, best, mean, it, self.iterations, clock, elites)
