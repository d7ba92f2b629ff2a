"""MPPI as TD-MPC2 runs it: sample, keep the top elites, refit with softmax (exponential) weights.

Sizes follow TD-MPC2: 512 samples, 64 elites, 6 iterations, std starting at 2 and kept in
[0.05, 2] (unit coordinates: 1 = bound half-range). The weights do not: TD-MPC2 weights elites by
exp(0.5 * (value - max value)) on its value scale; with costs and no reward scale we make them
scale-free by default: each elite's cost gap to the best is divided by the largest gap, and the
weight is exp(-gap / temperature), so temperature 0.5 means "the worst elite weighs e^-2 of the
best" whatever the energy's magnitude (a different quantity from TD-MPC2's 0.5).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worldmodel.planners.base import (BestSoFar, Bounds, Deadline, Energy, Planner, PlanResult, Problem,
                           finish, register_planner, take)


@register_planner("mppi")
@dataclass
class MPPI(Planner):
    samples: int = 512
    iterations: int = 6
    elites: int = 64
    temperature: float = 0.5
    normalize: bool = True      # divide costs by the elite cost range before the softmax
    init_std: float = 2.0
    min_std: float = 0.05
    max_std: float = 2.0
    keep_mean: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.elites <= self.samples:
            raise ValueError(f"mppi: need 1 <= elites <= samples, got {self.elites}, {self.samples}")
        if self.temperature <= 0 or self.init_std <= 0 or not 0 <= self.min_std <= self.max_std:
            raise ValueError("mppi: need temperature > 0, init_std > 0, 0 <= min_std <= max_std")

    @torch.no_grad()
    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        p = Problem(bounds, horizon, batch, "mppi")
        clock = Deadline(deadline_s, p.device)
        gen = self.generator(p.device)
        B, S, H, A = p.B, self.samples, p.H, p.A
        mean = p.init_mean(init_mean)                                       # (B, H, A)
        std = torch.full_like(mean, self.init_std)                          # (B, H, A)
        warm = p.init_elites(init_elites)
        best = BestSoFar(p)
        elites = None
        it = 0
        for it in range(1, self.iterations + 1):
            noise = torch.randn(B, S, H, A, generator=gen, device=p.device, dtype=p.dtype)
            u = p.candidates(mean, std, noise, warm if it == 1 else None, self.keep_mean)  # (B, S, H, A)
            costs = p.evaluate(energy, u)                                   # (B, S)
            best.update(costs, u, self.record_history)
            c_el, idx = costs.topk(self.elites, dim=1, largest=False)       # (B, E) ascending
            elites = take(u, idx)                                           # (B, E, H, A)
            finite = torch.isfinite(c_el)                                   # (B, E): inf (and NaN) never weigh
            gap = torch.where(finite, c_el - c_el[:, :1], 0.0)              # (B, E) >= 0
            if self.normalize:
                gap = gap / (gap.amax(1, keepdim=True) + 1e-12)             # the largest finite gap -> 1
            logits = (-gap / self.temperature).masked_fill(~finite, float("-inf"))
            w = torch.softmax(logits, dim=1).nan_to_num(0.0)[:, :, None, None]  # (B, E, 1, 1)
            new_mean = (w * elites).sum(1)                                  # (B, H, A)
            new_std = ((w * (elites - new_mean[:, None]).pow(2)).sum(1)).sqrt().clamp_(self.min_std, self.max_std)
            ok = finite[:, :1, None]                       # (B, 1, 1): some elite scored; else keep the search
            mean, std = torch.where(ok, new_mean, mean), torch.where(ok, new_std, std)
            if it < self.iterations and clock.expired(it):  # the loop's only host sync (optional)
                break
        return finish(p, best, mean, it, self.iterations, clock, elites)
