"""iCEM (Pinneri et al. 2020): CEM with colored noise, kept elites and a decaying population.

Differences from planners.cem, each one a documented iCEM ingredient:
- colored noise: samples are correlated along the horizon with a 1/f^beta power spectrum
  (beta ~ 2 gives smooth, low-frequency action sequences), made by shaping white noise in the
  frequency domain and inverting the FFT, then scaled back to unit variance;
- a fraction of each iteration's elites is carried into the next iteration's selection pool
  (their costs are reused: the energy is deterministic), so good candidates are never lost;
- the population shrinks geometrically (samples * decay^-i, never below 2 * elites);
- warm start by shifting: the controller passes the shifted previous mean (init_mean) and the
  shifted previous elites (init_elites, from PlanResult.elites), which join the first iteration.
proposal=True starts the mean at the energy's proposal (a distilled policy's plan, planners/policy.py),
as in planners.cem.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from worldmodel.planners.base import (BestSoFar, Bounds, Deadline, Energy, Planner, PlanResult, Problem,
                           finish, register_planner, take)
from worldmodel.planners.policy import late_fallback, seed_with_proposal, wants_proposal


def colored_noise(lead: tuple[int, ...], horizon: int, action_dim: int, beta: float,
                  generator: torch.Generator, device: torch.device, dtype: torch.dtype
                  ) -> torch.Tensor:
    """Gaussian noise (*lead, H, A) with unit variance and a 1/f^beta spectrum along H."""
    n_freq = horizon // 2 + 1
    # The DC term gets the lowest non-zero frequency's gain (a clamp, not an index-put, keeps
    # this free of host-to-device copies and so capturable in a CUDA graph).
    f = torch.fft.rfftfreq(horizon, device=device, dtype=dtype).clamp_min(1.0 / horizon)  # (F,)
    gain = f.pow(-beta / 2)                                                 # (F,) amplitude
    re_im = torch.randn(*lead, action_dim, n_freq, 2, generator=generator, device=device,
                        dtype=dtype)                                        # (*lead, A, F, 2)
    re_im[..., 0, 1] = 0.0                   # the DC bin of a real signal is real
    if horizon % 2 == 0:
        re_im[..., -1, 1] = 0.0              # so is the Nyquist bin
    spec = torch.complex(re_im[..., 0], re_im[..., 1]) * gain               # (*lead, A, F)
    x = torch.fft.irfft(spec, n=horizon)                                    # (*lead, A, H)
    # exact per-step variance of irfft: (g0^2 + 4 * sum_mid g^2 + g_nyq^2) / H^2
    g2 = gain.pow(2)
    mid = g2[1:-1] if horizon % 2 == 0 else g2[1:]
    var = g2[0] + 4 * mid.sum() + (g2[-1] if horizon % 2 == 0 and horizon > 1 else 0.0)
    return (x * (horizon / var.sqrt())).transpose(-1, -2)                   # (*lead, H, A)


@register_planner("icem")
@dataclass
class ICEM(Planner):
    samples: int = 200          # population of the first iteration
    iterations: int = 10
    elites: int = 20
    init_std: float = 1.0       # unit coordinates: 1 = bound half-range
    min_std: float = 0.05
    momentum: float = 0.1       # iCEM's alpha: mean = momentum * old + (1 - momentum) * elite mean
    beta: float = 2.0           # colored-noise exponent (0 = white noise, as in plain CEM)
    decay: float = 1.25         # population at iteration i: samples * decay^-i
    keep_fraction: float = 0.3  # share of elites carried into the next iteration's pool
    keep_mean: bool = True      # the current mean is always among the candidates
    proposal: bool | None = None  # start at the energy's proposal (a distilled policy's plan: wm eval distilled=);
                                  # None: whenever the energy has one, False: never, True: required
    proposal_std: float = 0.5  # the initial std around a proposal (unit coordinates)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 2 <= self.elites <= self.samples:
            raise ValueError(f"icem: need 2 <= elites <= samples, got {self.elites}, {self.samples}")
        if self.decay < 1 or not 0 <= self.keep_fraction <= 1 or self.beta < 0:
            raise ValueError("icem: need decay >= 1, 0 <= keep_fraction <= 1 and beta >= 0")
        if self.init_std <= 0 or self.proposal_std <= 0 or self.min_std < 0 or not 0 <= self.momentum < 1:
            raise ValueError("icem: need init_std > 0, proposal_std > 0, min_std >= 0 and 0 <= momentum < 1")

    def population(self, i: int) -> int:
        """Samples drawn at iteration i (0-based)."""
        return max(int(self.samples * self.decay ** (-i)), 2 * self.elites)

    @torch.no_grad()
    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        p = Problem(bounds, horizon, batch, "icem")
        clock = Deadline(deadline_s, p.device)
        gen = self.generator(p.device)
        B, H, A = p.B, p.H, p.A
        n_keep = math.ceil(self.keep_fraction * self.elites)
        mean = p.init_mean(init_mean)                                       # (B, H, A)
        std = torch.full_like(mean, self.init_std)                          # (B, H, A)
        warm = p.init_elites(init_elites)                                   # (B, K, H, A) | None
        if wants_proposal(self.proposal, energy):   # the previous mean joins the warm candidates, the proposal leads
            mean, warm = seed_with_proposal(energy, p, mean, warm, "icem")        # (B, H, A), (B, K+1, H, A)
            std = torch.full_like(mean, self.proposal_std)                  # (B, H, A)
            if (late := late_fallback(energy, p, mean, clock, self.iterations)) is not None:
                return late                # no time left for one iteration: the proposal
        best = BestSoFar(p)
        kept_u = kept_c = elites = None
        it = 0
        for it in range(1, self.iterations + 1):
            S = self.population(it - 1)
            noise = colored_noise((B, S), H, A, self.beta, gen, p.device, p.dtype)  # (B, S, H, A)
            u = p.candidates(mean, std, noise, warm if it == 1 else None, self.keep_mean)  # (B, S, H, A)
            costs = p.evaluate(energy, u)                                   # (B, S)
            best.update(costs, u, self.record_history)
            if kept_u is not None:                   # previous elites compete again, costs reused
                u = torch.cat([u, kept_u], dim=1)                          # (B, S + k, H, A)
                costs = torch.cat([costs, kept_c], dim=1)                  # (B, S + k)
            c_el, idx = costs.topk(self.elites, dim=1, largest=False)       # (B, E) sorted
            elites = take(u, idx)                                           # (B, E, H, A)
            kept_u, kept_c = elites[:, :n_keep], c_el[:, :n_keep]
            if n_keep == 0:
                kept_u = None
            mean = self.momentum * mean + (1 - self.momentum) * elites.mean(1)  # (B, H, A)
            std = elites.std(1).clamp_(min=self.min_std)                    # (B, H, A)
            if it < self.iterations and clock.expired(it):  # the loop's only host sync (optional)
                break
        return finish(p, best, mean, it, self.iterations, clock, elites)
