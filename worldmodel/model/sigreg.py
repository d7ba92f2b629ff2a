"""SIGReg: push latents toward an isotropic standard Gaussian with an Epps-Pulley test statistic.

For M random unit directions (fresh every call) the latents of each time step are projected to 1-D;
the empirical characteristic function over the batch, (mean cos(t x), mean sin(t x)), is compared
with the standard normal's exp(-t^2/2) at K knots t in [0, t_max]. The squared error is integrated
over t in [-t_max, t_max] (even integrand: trapezoid weights on [0, t_max], doubled inside) times
the window exp(-t^2/2), multiplied by the batch size N (the Epps-Pulley statistic), and averaged
over directions and time steps (as in LeWM / LeJEPA). Under torch.distributed the statistic is
that of the global batch (see `sigreg`).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def knot_weights(num_knots: int, t_max: float, device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Knots t (K,) on [0, t_max] and weights w (K,) so that sum_k w_k f(t_k) approximates
    integral_{-t_max}^{t_max} f(t) exp(-t^2/2) dt for an even f (trapezoid rule)."""
    if num_knots < 2:
        raise ValueError(f"num_knots must be >= 2, got {num_knots}")
    t = torch.linspace(0.0, t_max, num_knots, device=device, dtype=dtype)
    dt = t_max / (num_knots - 1)
    w = torch.full((num_knots,), 2 * dt, device=device, dtype=dtype)
    w[0] = w[-1] = dt
    return t, w * torch.exp(-0.5 * t * t)


def random_directions(dim: int, num: int, device, generator: torch.Generator | None = None) -> Tensor:
    """(dim, num) unit columns, uniform on the sphere. Under torch.distributed without a generator,
    rank 0's draw is broadcast so every rank projects on the same directions."""
    a = torch.randn(dim, num, device=device, generator=generator)
    if generator is None and _distributed():
        dist.broadcast(a, src=0)
    return a / a.norm(dim=0, keepdim=True)


class _TrigSums(torch.autograd.Function):
    """Batch sums of cos(t p) and sin(t p), (2, T, M, K), from projections p (T, M, N) and knots t (K,).

    The same values as autograd through `cos` / `sin`, but the backward reuses the forward's cos and
    sin instead of evaluating both again, and contracts them with the incoming gradient over the
    knots as one batched matmul per term: with the batch axis N next to K, nothing of size
    (T, M, N, K) is allocated in the backward, and it is cheaper than an elementwise backward over
    an (N, T, M, K) layout."""

    @staticmethod
    def forward(ctx, p: Tensor, t: Tensor) -> Tensor:
        s = p.unsqueeze(-1) * t                            # (T, M, N, K)
        c = s.cos()
        s.sin_()                                           # in place: one buffer fewer to allocate
        ctx.save_for_backward(c, s, t)
        return torch.stack([c.sum(2), s.sum(2)])           # (2, T, M, K)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        c, s, t = ctx.saved_tensors
        g_cos, g_sin = (g * t).unsqueeze(-1).unbind(0)     # (T, M, K, 1) each: d/dp cos(tp) = -t sin(tp)
        return (c @ g_sin - s @ g_cos).squeeze(-1), None   # (T, M, N)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the backward sums the incoming gradients over ranks too (every
    rank's loss depends on every rank's input). `torch.distributed.nn.functional.all_reduce`, which
    did this, is deprecated."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


def sigreg(z: Tensor, num_directions: int = 1024, num_knots: int = 17, t_max: float = 3.0,
           generator: torch.Generator | None = None) -> Tensor:
    """Epps-Pulley SIGReg statistic of latents z (B, T, D) or (N, D); a scalar (float32).

    Computed in float32 whatever z's dtype (cos of large arguments is meaningless in bf16).
    `generator` must live on z's device; under DDP seed it identically on every rank.

    Multi-process (world size > 1): every rank projects on the same directions (identically
    seeded generators, or none and rank 0's draw is broadcast); the local cos/sin sums are
    all-reduced differentiably and divided by the global N. The all-reduce's backward sums every
    rank's (identical) gradient, so after DDP's averaging the parameters get exactly the
    full-batch gradient; the local input gradient is world_size x the full-batch one.
    """
    if z.dim() == 2:
        z = z[:, None]                                     # (N, 1, D)
    if z.dim() != 3:
        raise ValueError(f"sigreg expects z (B, T, D) or (N, D), got {tuple(z.shape)}")
    z = z.float()
    n_local, _, d = z.shape
    dirs = random_directions(d, num_directions, z.device, generator)  # (D, M)
    t, w = knot_weights(num_knots, t_max, device=z.device)            # (K,), (K,)
    t, w = t[1:], w[1:]            # at t = 0 the ECF is exactly 1 = exp(0): its term is exactly 0
    p = dirs.T @ z.permute(1, 2, 0)                        # (T, M, N): the batch axis last
    sums = _TrigSums.apply(p, t)                           # (2, T, M, K - 1) local sums over the batch
    n = torch.tensor(float(n_local), device=z.device)
    if _distributed():
        sums = _AllReduceSum.apply(sums)                   # differentiable; backward sums grads
        dist.all_reduce(n)                                 # global batch size (no grad needed)
    cos_mean, sin_mean = (sums / n).unbind(0)              # (T, M, K) each
    err = (cos_mean - torch.exp(-0.5 * t * t)).square() + sin_mean.square()  # (T, M, K)
    return (err @ w * n).mean()                            # mean over T and M
