"""SIGReg: numerics against a float64 reference, sensitivity, gradients, and exact 2-process DDP."""
from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from worldmodel.model.sigreg import sigreg


def reference_sigreg(z: torch.Tensor, dirs: torch.Tensor, num_knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """Float64, loop-based Epps-Pulley statistic written from its definition:
    N * integral_{-t_max}^{t_max} |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt (trapezoid), mean over
    directions and time steps."""
    z, dirs = z.double(), dirs.double()
    n, t_steps, _ = z.shape
    ts = [-t_max + 2 * t_max * i / (2 * (num_knots - 1)) for i in range(2 * num_knots - 1)]  # symmetric grid
    total = 0.0
    for step in range(t_steps):
        for m in range(dirs.shape[1]):
            x = z[:, step] @ dirs[:, m]                           # (N,)
            vals = []
            for t in ts:
                ecf = torch.complex(torch.cos(t * x).mean(), torch.sin(t * x).mean())
                vals.append(abs(ecf - math.exp(-t * t / 2)) ** 2 * math.exp(-t * t / 2))
            h = ts[1] - ts[0]
            integral = h * (sum(vals) - 0.5 * (vals[0] + vals[-1]))
            total += n * integral
    return (total / (t_steps * dirs.shape[1])).detach()


def directions(d: int, m: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, m, generator=torch.Generator().manual_seed(seed))
    return a / a.norm(dim=0, keepdim=True)


def test_matches_float64_reference():
    z = torch.randn(64, 2, 8) * 1.3 + 0.2
    value = sigreg(z, num_directions=16, generator=torch.Generator().manual_seed(5))
    ref = reference_sigreg(z, directions(8, 16, seed=5))
    torch.testing.assert_close(value.double(), ref, rtol=1e-4, atol=1e-5)


def test_small_for_gaussians_large_for_collapse_and_scale():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(512, 32, generator=g)
    stat = lambda z: float(sigreg(z, 256, generator=torch.Generator().manual_seed(1)))  # noqa: E731
    s_gauss = stat(gauss)
    s_const = stat(torch.ones(512, 32) * 0.3)
    s_collapsed = stat(torch.randn(512, 1, generator=g).expand(512, 32))  # all dims equal: rank 1
    s_scaled = stat(gauss * 3.0)
    s_shifted = stat(gauss + 2.0)
    # Under H0, E[N |ecf(t) - phi(t)|^2] = 1 - exp(-t^2), so the expected statistic is
    # integral (1 - e^{-t^2}) e^{-t^2/2} dt ~ sqrt(2 pi) - sqrt(2 pi / 3) ~ 1.06, whatever N.
    assert 0.3 < s_gauss < 2.0, s_gauss
    for bad in (s_const, s_collapsed, s_scaled, s_shifted):
        assert bad > 20 * s_gauss, (s_gauss, s_const, s_collapsed, s_scaled, s_shifted)


def test_gradients_flow_and_reduce_the_statistic():
    z = (torch.randn(256, 16) * 0.2).requires_grad_()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    value = sigreg(z, 128, generator=gen())
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = z - 0.05 * z.grad / z.grad.norm() * z.norm()
    assert sigreg(stepped, 128, generator=gen()) < value               # descent direction


def test_trig_sums_hand_written_backward_is_exact():
    from worldmodel.model.sigreg import _TrigSums

    p = torch.randn(2, 7, 5, dtype=torch.float64, requires_grad=True)   # (T, M, N) projections
    t = torch.linspace(0.2, 3.0, 6, dtype=torch.float64)                 # (K,) knots
    plain = torch.stack([(p[..., None] * t).cos().sum(2), (p[..., None] * t).sin().sum(2)])
    torch.testing.assert_close(_TrigSums.apply(p, t), plain)
    assert torch.autograd.gradcheck(lambda p: _TrigSums.apply(p, t), (p,))


def test_fresh_directions_unless_seeded_and_bf16_input():
    z = torch.randn(128, 3, 16)
    a, b = sigreg(z, 64), sigreg(z, 64)
    assert not torch.equal(a, b)                                      # fresh directions each call
    s1 = sigreg(z, 64, generator=torch.Generator().manual_seed(9))
    s2 = sigreg(z.bfloat16(), 64, generator=torch.Generator().manual_seed(9))
    assert s2.dtype == torch.float32 and torch.isclose(s1, s2, rtol=0.1)


# ------------------------------------------------------------------ two-process gloo DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, z_full: torch.Tensor, w_full: torch.Tensor, out: dict):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        half = z_full.shape[0] // world
        x = z_full[rank * half:(rank + 1) * half].clone().requires_grad_()
        w = w_full.clone().requires_grad_()                          # a shared "encoder" parameter
        value = sigreg(x @ w, 64, generator=torch.Generator().manual_seed(11))
        value.backward()
        dist.all_reduce(w.grad)                                       # what DDP does: average grads
        w.grad /= world
        out[rank] = (value.detach(), x.grad.clone(), w.grad.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_full_batch():
    torch.manual_seed(0)
    z_full = torch.randn(48, 3, 8)
    w_full = torch.eye(8) + 0.1 * torch.randn(8, 8)
    ref_x, ref_w = z_full.clone().requires_grad_(), w_full.clone().requires_grad_()
    ref = sigreg(ref_x @ ref_w, 64, generator=torch.Generator().manual_seed(11))
    ref.backward()

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(2, _free_port(), z_full, w_full, out), nprocs=2,
                           start_method="spawn", join=True)
        out = dict(out)
    for rank in range(2):
        value, x_grad, w_grad = out[rank]
        torch.testing.assert_close(value, ref.detach(), rtol=1e-6, atol=1e-6)
        # After DDP averaging the parameter gradient is exactly the full-batch one ...
        torch.testing.assert_close(w_grad, ref_w.grad, rtol=1e-5, atol=1e-7)
        # ... because each rank's input gradient is world_size x its slice of the full-batch one.
        torch.testing.assert_close(x_grad / 2, ref_x.grad[rank * 24:(rank + 1) * 24], rtol=1e-5, atol=1e-8)
