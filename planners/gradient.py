"""Gradient planner: Adam on the action sequences, several random restarts in parallel.

The S restarts are the "samples" axis, so one energy call scores all of them; after every Adam
step the actions are projected back into the bounds. Restart 0 starts at the initial mean (the
controller's warm start), the others at the mean plus Gaussian noise (unit coordinates, 1 = bound
half-range). In LeWM's solver ablation on Push-T, CEM beat Adam: gradients through a learned
predictor are useful but noisier than sampling. The energy must be differentiable: do not wrap
it in torch.no_grad / torch.inference_mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from worldmodel.planners.base import (BestSoFar, Bounds, Deadline, Energy, Planner, PlanResult, Problem,
                           finish, register_planner)


@register_planner("gradient")
@dataclass
class GradientPlanner(Planner):
    samples: int = 16           # parallel restarts
    iterations: int = 50        # energy evaluations (Adam steps = iterations - 1)
    lr: float = 0.1             # Adam step size in unit coordinates
    init_std: float = 0.5       # restart spread around the initial mean
    betas: tuple[float, float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lr <= 0 or self.init_std < 0:
            raise ValueError("gradient: need lr > 0 and init_std >= 0")

    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        p = Problem(bounds, horizon, batch, "gradient")
        clock = Deadline(deadline_s, p.device)
        gen = self.generator(p.device)
        B, S, H, A = p.B, self.samples, p.H, p.A
        mean = p.init_mean(init_mean)                                       # (B, H, A)
        noise = torch.randn(B, S, H, A, generator=gen, device=p.device, dtype=p.dtype)
        u0 = (mean[:, None] + self.init_std * noise).clamp_(-1.0, 1.0)     # (B, S, H, A)
        warm = p.init_elites(init_elites)
        if warm is not None:
            k = min(warm.shape[1], S - 1)
            u0[:, S - k:] = warm[:, :k]
        u0[:, 0] = mean
        u = u0.requires_grad_(True)                                        # (B, S, H, A) leaf
        m = torch.zeros_like(u0)                                           # Adam first moment
        v = torch.zeros_like(u0)                                           # Adam second moment
        b1, b2 = self.betas
        best = BestSoFar(p)
        it = 0
        for it in range(1, self.iterations + 1):
            with torch.enable_grad():
                costs = p.evaluate(energy, u)                               # (B, S)
                if costs.grad_fn is None:
                    raise RuntimeError(
                        "gradient planner: the energy's costs carry no gradient; make the energy "
                        "differentiable (no torch.no_grad / inference_mode inside it) or use cem")
                best.update(costs.detach(), u.detach(), self.record_history)
                if it == self.iterations:
                    break
                # independent sequences: the sum's gradient w.r.t. each is its own gradient
                finite = costs.where(torch.isfinite(costs), torch.zeros_like(costs))
                (grad,) = torch.autograd.grad(finite.sum(), u)              # (B, S, H, A)
                # a non-finite cost's local derivative can be NaN (0 x NaN): no step for that candidate
                grad = grad.where(torch.isfinite(costs)[:, :, None, None], 0.0).nan_to_num_(0.0)
            with torch.no_grad():                   # Adam step, then project to the bounds
                m.mul_(b1).add_(grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
                step = self.lr * (m / (1 - b1 ** it)) / ((v / (1 - b2 ** it)).sqrt() + 1e-8)
                u.sub_(step).clamp_(-1.0, 1.0)
            if clock.expired(it):                   # the loop's only host sync (optional)
                break
        with torch.no_grad():
            return finish(p, best, best.u, it, self.iterations, clock, None)
