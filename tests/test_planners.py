"""Optimisers on analytic energies: optimum found, bounds respected, batched, seeded, anytime."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from worldmodel.planners import PLANNERS, Bounds, colored_noise, make_planner, planner_from_config

# fast settings per planner that still solve a 6-dim quadratic (H=3, A=2) to ~1e-2
FAST = {
    "cem": dict(samples=200, iterations=20, elites=20),
    "icem": dict(samples=200, iterations=25, elites=20, decay=1.1),
    "mppi": dict(samples=256, iterations=20, elites=32),
    "gradient": dict(samples=4, iterations=150, lr=0.05),
}
H = 3
LOW, HIGH = [-1.0, -2.0], [1.0, 3.0]


def quadratic(target: torch.Tensor):
    """Energy sum_h ||a_h - target_b||^2: actions (B, S, H, A), target (B, A) -> (B, S)."""
    def energy(a: torch.Tensor) -> torch.Tensor:
        return (a - target[:, None, None]).pow(2).sum((-1, -2))
    return energy


def bounds(dtype=torch.float32, device="cpu") -> Bounds:
    return Bounds.make(LOW, HIGH, device=device, dtype=dtype)


def in_bounds(x: torch.Tensor, b: Bounds) -> bool:
    return bool(((x >= b.low) & (x <= b.high)).all())


def test_all_planners_registered():
    assert set(FAST) <= set(PLANNERS)


@pytest.mark.parametrize("name", sorted(FAST))
def test_finds_shifted_quadratic_optimum_batched(name):
    target = torch.tensor([[0.3, -1.0], [0.9, 2.5], [-0.5, 0.2]])              # (B=3, A)
    b = bounds()
    res = make_planner(name, seed=1, **FAST[name]).solve(quadratic(target), b, H, batch=3)
    assert res.actions.shape == (3, H, 2) and res.cost.shape == (3,)
    assert in_bounds(res.actions, b)
    err = (res.actions - target[:, None]).abs().max().item()
    assert err < 0.1, f"{name}: max error {err:.3f}"
    assert res.iterations == FAST[name]["iterations"] and not res.deadline_missed
    assert torch.allclose(res.cost, quadratic(target)(res.actions[:, None])[:, 0], rtol=1e-4)
    assert res.mean is not None and in_bounds(res.mean, b)


@pytest.mark.parametrize("name", sorted(FAST))
def test_optimum_outside_bounds_lands_on_boundary(name):
    target = torch.tensor([[5.0, -7.0]])                       # beyond high[0] and low[1]
    b = bounds()
    res = make_planner(name, seed=0, **FAST[name]).solve(quadratic(target), b, H, batch=1)
    assert in_bounds(res.actions, b)
    corner = torch.tensor([HIGH[0], LOW[1]])
    assert (res.actions[0] - corner).abs().max().item() < 0.05


@pytest.mark.parametrize("name", sorted(FAST))
def test_seeded_reproducible(name):
    target = torch.tensor([[0.1, 0.4]])

    def run(seed):
        seen = []
        energy = quadratic(target)
        planner = make_planner(name, seed=seed, **dict(FAST[name], iterations=3))
        res = planner.solve(lambda a: (seen.append(a.clone()), energy(a))[1], bounds(), H)
        return res, seen[0]

    (r1, s1), (r2, s2), (_, s3) = run(7), run(7), run(8)
    assert torch.equal(s1, s2) and torch.equal(r1.actions, r2.actions)
    assert not torch.equal(s1, s3)


@pytest.mark.parametrize("name", sorted(FAST))
def test_float64(name):
    target = torch.tensor([[0.3, -1.0]], dtype=torch.float64)
    b = bounds(torch.float64)
    res = make_planner(name, **FAST[name]).solve(quadratic(target), b, H)
    assert res.actions.dtype == torch.float64 and res.cost.dtype == torch.float64
    assert (res.actions - target[:, None]).abs().max().item() < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FAST))
def test_cuda(name):
    target = torch.tensor([[0.3, -1.0], [0.9, 2.5]], device="cuda")
    b = bounds(device="cuda")
    res = make_planner(name, **FAST[name]).solve(quadratic(target), b, H, batch=2,
                                                 deadline_s=10.0)
    assert res.actions.device.type == "cuda" and in_bounds(res.actions, b)
    assert (res.actions - target[:, None]).abs().max().item() < 0.1


@pytest.mark.parametrize("name", sorted(FAST))
def test_deadline_returns_early_with_valid_actions(name):
    target = torch.tensor([[0.3, -1.0]])
    energy = quadratic(target)

    def slow(a):
        time.sleep(0.02)
        return energy(a)

    b = bounds()
    t = time.perf_counter()
    res = make_planner(name, **dict(FAST[name], iterations=1000)).solve(slow, b, H, deadline_s=0.1)
    wall = time.perf_counter() - t
    assert res.deadline_missed and 1 <= res.iterations < 1000
    assert wall < 0.5 and res.latency_s <= wall
    assert in_bounds(res.actions, b) and torch.isfinite(res.cost).all()


@pytest.mark.parametrize("name", sorted(FAST))
def test_warm_start_and_nan_costs(name):
    """Starting at the optimum keeps it (the mean is always scored); NaN costs are never chosen."""
    target = torch.tensor([[0.3, -1.0]])
    energy = quadratic(target)

    def nan_half(a):
        c = energy(a)
        return torch.where(torch.arange(c.shape[1]) % 2 == 1, float("nan"), c)

    init = target[:, None].expand(1, H, 2)
    res = make_planner(name, **dict(FAST[name], iterations=2)).solve(nan_half, bounds(), H,
                                                                    init_mean=init)
    assert torch.isfinite(res.cost).all() and res.cost.item() < 1e-6


def test_init_elites_join_first_iteration():
    target = torch.tensor([[0.3, -1.0]])
    elites = target[:, None, None].expand(1, 4, H, 2)           # (B, K, H, A) all optimal
    res = make_planner("cem", keep_mean=False, iterations=1).solve(quadratic(target), bounds(), H,
                                                                  init_elites=elites)
    assert res.cost.item() < 1e-10
    assert res.elites is not None and res.elites.shape == (1, 30, H, 2)


def test_bad_inputs_name_the_fix():
    b = bounds()
    cem = make_planner("cem", iterations=1)
    with pytest.raises(ValueError, match="init_mean"):
        cem.solve(quadratic(torch.zeros(1, 2)), b, H, init_mean=torch.zeros(1, H + 1, 2))
    for name in ("cem", "icem", "mppi", "gradient"):                  # NaN would reach the actions
        with pytest.raises(ValueError, match="init_mean holds NaN"):
            make_planner(name, iterations=1).solve(quadratic(torch.zeros(1, 2)), b, H,
                                                   init_mean=torch.full((1, H, 2), float("nan")))
    for name, key in (("cem", "init_std"), ("icem", "decay"), ("mppi", "temperature"), ("gradient", "lr")):
        with pytest.raises(ValueError, match=f"{name}: {key} must be finite"):
            make_planner(name, **{key: float("nan")})
    with pytest.raises(ValueError, match="init_elites holds NaN"):
        cem.solve(quadratic(torch.zeros(1, 2)), b, H, init_elites=torch.full((1, 2, H, 2), float("inf")))
    with pytest.raises(ValueError, match=r"costs \(B, S\)"):
        cem.solve(lambda a: a.sum(-1), b, H)
    with pytest.raises(ValueError, match="deadline_s"):
        cem.solve(quadratic(torch.zeros(1, 2)), b, H, deadline_s=0)
    with pytest.raises(TypeError, match="Bounds.make"):
        cem.solve(quadratic(torch.zeros(1, 2)), (LOW, HIGH), H)
    with pytest.raises(ValueError, match="finite"):                   # an infinite box: NaN samples
        Bounds.make([-float("inf"), 0.0], [float("inf"), 1.0])
    with pytest.raises(ValueError, match="elites"):
        make_planner("cem", samples=10, elites=20)
    with pytest.raises(ValueError, match="unknown planner"):
        make_planner("nope")
    grad = make_planner("gradient", iterations=2)
    with pytest.raises(RuntimeError, match="differentiable"):
        grad.solve(lambda a: quadratic(torch.zeros(1, 2))(a.detach()), b, H)


@pytest.mark.parametrize("beta,corr", [(0.0, (-0.05, 0.05)), (2.0, (0.5, 1.0))])
def test_colored_noise_unit_variance_and_spectrum(beta, corr):
    g = torch.Generator().manual_seed(0)
    x = colored_noise((20000,), 10, 2, beta, g, torch.device("cpu"), torch.float64)  # (N, H, A)
    assert x.shape == (20000, 10, 2)
    assert abs(x.var(0).mean().item() - 1.0) < 0.05
    lag1 = (x[:, 1:] * x[:, :-1]).mean().item()
    assert corr[0] < lag1 < corr[1]


@pytest.mark.parametrize("name", sorted(FAST))
def test_configs_build_planners(name):
    path = Path(__file__).resolve().parent.parent / "configs" / "planner" / f"{name}.yaml"
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == name
    planner = planner_from_config(cfg, seed=3)
    assert type(planner) is PLANNERS[name] and planner.seed == 3


@pytest.mark.parametrize("name", ["cem", "icem", "mppi", "gradient"])
def test_non_finite_costs_never_weigh_nor_reach_the_energy(name):
    """Candidates costing NaN/Inf are never chosen, never pull the search, and leave it finite (MPPI
    once gave them weight, and a NaN mean where every cost was NaN; the gradient planner stepped
    them to NaN)."""
    sent_nan = []

    def half_broken(a):                                               # (B, S, H, A) -> (B, S)
        sent_nan.append(bool(torch.isnan(a).any()))
        c = (a - 0.3).pow(2).sum((-1, -2))
        c[:, : a.shape[1] // 3] = float("nan")
        c[:, a.shape[1] // 3: a.shape[1] // 2] = float("inf")
        return c

    kw = {"iterations": 4} if name != "gradient" else {"iterations": 6, "samples": 8}
    res = make_planner(name, **kw).solve(half_broken, bounds(), H)
    assert not any(sent_nan) and torch.isfinite(res.cost).all()
    assert res.mean is None or torch.isfinite(res.mean).all()
    res = make_planner(name, **kw).solve(lambda a: a.sum((-1, -2)) * float("nan"), bounds(), H)
    assert torch.isfinite(res.actions).all() and (res.mean is None or torch.isfinite(res.mean).all())
