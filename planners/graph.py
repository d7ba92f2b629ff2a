"""A planner's whole solve as one CUDA graph, replayed at every plan.

A sampling solve is many sequential predictor steps of small kernels, where launching them can
cost more than computing them. Captured once as a CUDA graph and replayed, the solve launches as
one unit (benchmarks/plan_latency.py --cuda-graph times it):

    graphed = GraphedPlanner(make_planner("cem"))
    res = graphed.solve(energy, bounds, horizon, batch, init_mean, init_elites, key=T)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from worldmodel.planners.base import Bounds, Energy, Planner, PlanResult


class StaticBuffers:
    """Tensors at fixed addresses for a captured graph to read: one buffer per (name, shape, dtype),
    created on first use; later values are copied into it."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}

    def keep(self, name: tuple, x: torch.Tensor) -> torch.Tensor:
        key = (*name, tuple(x.shape), x.dtype)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = x.detach().clone()
        else:
            buf.copy_(x)
        return buf


@dataclass
class _Captured:
    graph: "torch.cuda.CUDAGraph"
    init_mean: torch.Tensor | None       # (B, H, A) static input
    init_elites: torch.Tensor | None     # (B, K, H, A) static input
    out: PlanResult                      # static outputs, overwritten by each replay


class GraphedPlanner:
    """`planner.solve` captured per input signature and replayed (CUDA only).

    One graph per signature (key, horizon, batch, shapes of init_mean / init_elites): the first
    solve of a signature warms up on a side stream and captures, later ones copy the inputs into
    static buffers and replay. `key` names whatever else decides the energy's shapes (the
    controller passes the history length T). The energy must read its inputs from tensors at fixed
    addresses updated in place (GoalEnergy(static=True)). The planner's random stream is registered
    with the graph (fresh samples each replay); every iteration always runs (`deadline_missed` then
    means the solve took longer than `deadline_s`); the result's tensors are copies."""

    def __init__(self, planner: Planner, warmup: int = 2) -> None:
        if not callable(getattr(planner, "solve", None)):
            raise TypeError("GraphedPlanner wraps a planner with solve(...) (planners.make_planner)")
        self.planner, self.warmup = planner, warmup
        self.name = f"graphed-{getattr(planner, 'name', type(planner).__name__)}"
        self._graphs: dict[tuple, _Captured] = {}

    def reseed(self, seed: int | None = None) -> None:
        """Reseed the wrapped planner. Captured graphs hold its old generator: drop them."""
        self.planner.reseed(seed)
        self._graphs.clear()

    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None, key: object = None) -> PlanResult:
        device = bounds.low.device
        if device.type != "cuda":
            raise ValueError(f"GraphedPlanner needs a CUDA device, the bounds are on {device}; "
                             "plan without a CUDA graph on the CPU")
        t = time.perf_counter()
        shape = lambda x: None if x is None else tuple(x.shape)  # noqa: E731
        sig = (key, id(energy), id(bounds), int(horizon), int(batch), shape(init_mean), shape(init_elites))
        cap = self._graphs.get(sig)
        if cap is None:
            cap = self._graphs[sig] = self._capture(energy, bounds, horizon, batch, init_mean, init_elites)
        if init_mean is not None:
            cap.init_mean.copy_(init_mean)
        if init_elites is not None:
            cap.init_elites.copy_(init_elites)
        cap.graph.replay()
        o = cap.out
        res = PlanResult(actions=o.actions.clone(), cost=o.cost.clone(), iterations=o.iterations,
                         mean=None if o.mean is None else o.mean.clone(),
                         elites=None if o.elites is None else o.elites.clone())
        torch.cuda.current_stream(device).synchronize()   # host sync: once per solve, to time it
        res.latency_s = time.perf_counter() - t
        res.deadline_missed = deadline_s is not None and res.latency_s > deadline_s
        return res

    def _capture(self, energy, bounds, horizon, batch, init_mean, init_elites) -> _Captured:
        mean = None if init_mean is None else init_mean.clone()
        elites = None if init_elites is None else init_elites.clone()

        def run() -> PlanResult:
            return self.planner.solve(energy, bounds, horizon, batch=batch, init_mean=mean,
                                      init_elites=elites, deadline_s=None)

        side = torch.cuda.Stream(bounds.low.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                      # allocator pools and lazy kernels
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if not hasattr(graph, "register_generator_state"):
            raise RuntimeError("GraphedPlanner needs torch >= 2.5 (CUDAGraph.register_generator_state): "
                               "without it every replay would draw the same samples")
        graph.register_generator_state(self.planner.generator(bounds.low.device))  # fresh samples per replay
        with torch.cuda.graph(graph):
            out = run()
        return _Captured(graph, mean, elites, out)
