"""What every planner shares: the energy protocol, the result type, bounds, and the registry.

A planner sees only an energy: a callable mapping a batch of candidate action sequences
(B, S, H, A) to costs (B, S). It knows nothing about world models, images or simulators.
Here A is the per-step action width the energy expects (for a world model: frameskip x env A).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import inspect
import math
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Protocol

import numpy as np
import torch


class Energy(Protocol):
    def __call__(self, actions: torch.Tensor) -> torch.Tensor:
        """actions (B, S, H, A) -> costs (B, S); lower is better."""
        ...


@dataclass
class PlanResult:
    actions: torch.Tensor          # (B, H, A) best sequence found, inside the bounds
    cost: torch.Tensor             # (B,) its energy
    iterations: int                # optimiser iterations actually run
    latency_s: float = 0.0         # wall time of the solve (filled by the caller that times it)
    deadline_missed: bool = False  # the time budget ran out before all iterations
    mean: torch.Tensor | None = None   # (B, H, A) final sampling mean (warm-start material)
    elites: torch.Tensor | None = None  # (B, K, H, A) final elites (warm-start material), if any
    history: list[float] = field(default_factory=list)  # best cost per iteration (B-mean); debug only


@dataclass(frozen=True)
class Bounds:
    """Box bounds on one step's action (A,), broadcast over (B, S, H, A)."""

    low: torch.Tensor
    high: torch.Tensor

    @staticmethod
    def make(low, high, device=None, dtype=torch.float32) -> "Bounds":
        lo = torch.as_tensor(low, dtype=dtype, device=device).flatten()
        hi = torch.as_tensor(high, dtype=dtype, device=device).flatten()
        if lo.shape != hi.shape or not bool((hi > lo).all()):
            raise ValueError(f"bounds need low < high elementwise with equal shapes, got {lo} / {hi}")
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"bounds must be finite, got {lo} / {hi}: planners sample the box (an infinite "
                             "one gives NaN actions); give the actuator's real limits")
        return Bounds(lo, hi)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)

    @property
    def center(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    @property
    def half_range(self) -> torch.Tensor:
        return (self.high - self.low) / 2


def float32_box(low, high) -> tuple[np.ndarray, np.ndarray]:
    """The float32 bounds (A,) inside the box [low, high] as given (any precision): each rounded inward
    where float32 cannot hold it, so a float32 action clipped to them is inside the bounds as given.
    Refuses a box so narrow that no float32 value lies inside it (an action could not keep the promise
    of staying within the bounds)."""
    f64 = lambda x: (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor)    # noqa: E731
                     else np.asarray(x, np.float64)).reshape(-1)          # (not via a float32 tensor)
    lo, hi = f64(low), f64(high)
    lo32, hi32 = lo.astype(np.float32), hi.astype(np.float32)
    lo32 = np.where(lo32 < lo, np.nextafter(lo32, np.float32(np.inf)), lo32)
    hi32 = np.where(hi32 > hi, np.nextafter(hi32, np.float32(-np.inf)), hi32)
    empty = np.flatnonzero(lo32 > hi32)
    if empty.size:
        i = int(empty[0])
        raise ValueError(f"bounds [{float(lo[i])!r}, {float(hi[i])!r}] (dimension {i}) hold no float32 value, "
                         "the actions' type: no action could stay inside them; widen the box to at least float32's resolution")
    return lo32, hi32


def check_costs(cost: torch.Tensor, who: str) -> None:
    """Refuse a plan whose best cost (B,) is not finite: the energy gave no finite cost to any candidate
    of an environment (NaN or Inf everywhere: a model with NaN weights, a broken cost), so its "best"
    actions are arbitrary (the box centre). One host sync; skipped while a CUDA graph is captured."""
    if cost.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = ~torch.isfinite(cost)
    if bool(bad.any()):
        raise ValueError(f"{who}: the energy was NaN or Inf for every candidate of {int(bad.sum())} of "
                         f"{cost.numel()} environment(s); nothing to choose from. Check the model (NaN "
                         "weights?) and the goal and observations it was given")


PLANNERS: dict[str, type] = {}


def register_planner(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in PLANNERS:
            raise ValueError(f"planner {name!r} registered twice")
        PLANNERS[name] = cls
        cls.name = name
        return cls
    return deco


def make_planner(name: str, **kwargs):
    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose one of {sorted(PLANNERS)} (your own: "
                         "@register_planner in a module named by $WM_PLUGINS)")
    cls = PLANNERS[name]
    params = inspect.signature(cls).parameters.values()
    keys = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    if not open_ended and (unknown := sorted(set(kwargs) - set(keys))):
        raise ValueError(f"planner {name!r} has no key {', '.join(unknown)}; its keys: {', '.join(keys)} (choose "
                         f"the planner with planner={name}, not planner.name=, so no other planner's keys come along)")
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Shared machinery for the optimisers (cem, icem, mppi, gradient).
#
# Every optimiser searches in *unit* coordinates u in [-1, 1]^A, one unit = the bound half-range:
#     raw action = bounds.center + bounds.half_range * u
# so a standard deviation of 1 spans the whole box whatever the robot's units (LeWM samples with
# std 1 on normalised actions; here "normalised" means scaled to the bound box). The energy always
# receives raw actions, clipped to the bounds.
# ----------------------------------------------------------------------------------------------


@dataclass
class Planner(ABC):
    """Base of every optimiser: hyper-parameters as dataclass fields plus a seeded torch.Generator.

    `solve(energy, bounds, horizon, batch, init_mean, init_elites, deadline_s) -> PlanResult`.
    The problem's device and dtype are those of `bounds` (float32 or float64); the planner owns
    one generator per device, seeded with `seed`, so a fresh planner with the same seed repeats
    itself exactly and successive solves draw fresh samples.
    """

    samples: int = 300           # candidates per environment per iteration (S)
    iterations: int = 30         # optimiser iterations (an upper bound when a deadline is given)
    seed: int = 0
    record_history: bool = False  # keep the best cost per iteration (one host sync at the end)
    _generators: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    name = "base"

    def __post_init__(self) -> None:
        for f in fields(self):               # NaN passes every `x <= 0` check: refuse it by name
            v = getattr(self, f.name)
            if any(isinstance(x, float) and not math.isfinite(x) for x in (v if isinstance(v, tuple) else (v,))):
                raise ValueError(f"{self.name}: {f.name} must be finite, got {v}")
        if self.samples < 1 or self.iterations < 1:
            raise ValueError(f"{type(self).__name__}: samples and iterations must be >= 1, "
                             f"got samples={self.samples}, iterations={self.iterations}")

    def reseed(self, seed: int | None = None) -> None:
        """Restart the random streams (from `seed`, or from the configured one)."""
        if seed is not None:
            self.seed = int(seed)
        self._generators.clear()

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The random streams' positions, for `set_rng_state` (e.g. around throw-away warm-up solves)."""
        return {k: g.get_state() for k, g in self._generators.items()}

    def set_rng_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put the random streams back where `rng_state()` found them (streams made since restart
        from the seed)."""
        for k in [k for k in self._generators if k not in state]:
            del self._generators[k]
        for k, s in state.items():
            self._generators[k].set_state(s)

    def generator(self, device: torch.device) -> torch.Generator:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:   # "cuda" and "cuda:0" share one stream
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    @abstractmethod
    def solve(self, energy: Energy, bounds: Bounds, horizon: int, batch: int = 1,
              init_mean: torch.Tensor | None = None, init_elites: torch.Tensor | None = None,
              deadline_s: float | None = None) -> PlanResult:
        """Minimise `energy` over (batch, horizon, A) action sequences inside `bounds`.

        init_mean (B, H, A) raw: where sampling starts (the controller's shifted previous plan);
        None starts at the box centre. init_elites (B, K, H, A) raw: extra candidates evaluated in
        the first iteration (e.g. the previous solve's elites, shifted). deadline_s: anytime
        budget; the solve stops after the iteration that crosses it and returns the best so far.
        """


class Problem:
    """One solve's geometry: unit <-> raw mapping, input checks, device and dtype."""

    def __init__(self, bounds: Bounds, horizon: int, batch: int, who: str) -> None:
        if not isinstance(bounds, Bounds):
            raise TypeError(f"{who}: bounds must be planners.base.Bounds (use Bounds.make(low, high))")
        if bounds.low.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{who}: plan in float32 or float64 (got {bounds.low.dtype}); "
                            "run the energy under autocast for bf16 instead")
        if horizon < 1 or batch < 1:
            raise ValueError(f"{who}: horizon and batch must be >= 1, got {horizon}, {batch}")
        self.bounds, self.H, self.B, self.who = bounds, int(horizon), int(batch), who
        self.A = bounds.low.shape[0]
        self.device, self.dtype = bounds.low.device, bounds.low.dtype
        self.center, self.half = bounds.center, bounds.half_range          # (A,)

    def to_raw(self, u: torch.Tensor) -> torch.Tensor:
        return self.center + self.half * u.clamp(-1.0, 1.0)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.center) / self.half).clamp(-1.0, 1.0)

    def _check(self, x: torch.Tensor, shape: tuple, what: str) -> torch.Tensor:
        """Check x against `shape` (-1 = any size) and move it to the problem's device/dtype."""
        x = torch.as_tensor(x)
        if x.dim() != len(shape) or any(n != -1 and n != m for n, m in zip(shape, x.shape)):
            raise ValueError(f"{self.who}: {what} must have shape {shape} (-1 = any), "
                             f"got {tuple(x.shape)}")
        x = x.to(self.device, self.dtype)
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing and not bool(torch.isfinite(x).all()):  # host sync: once per solve, not per iteration
            raise ValueError(f"{self.who}: {what} holds NaN or Inf; pass finite actions in raw env units "
                             f"(or None to start at the box centre)")
        return x

    def init_mean(self, init_mean: torch.Tensor | None) -> torch.Tensor:
        """(B, H, A) starting mean in unit coordinates (zeros = box centre)."""
        if init_mean is None:
            return torch.zeros(self.B, self.H, self.A, device=self.device, dtype=self.dtype)
        return self.to_unit(self._check(init_mean, (self.B, self.H, self.A), "init_mean"))

    def init_elites(self, init_elites: torch.Tensor | None) -> torch.Tensor | None:
        """(B, K, H, A) warm candidates in unit coordinates, or None."""
        if init_elites is None:
            return None
        return self.to_unit(self._check(init_elites, (self.B, -1, self.H, self.A), "init_elites"))

    def candidates(self, mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor,
                   warm: torch.Tensor | None, keep_mean: bool) -> torch.Tensor:
        """Unit candidates (B, S, H, A) = mean + std * noise inside the box; `warm` (B, K, H, A)
        replaces the last K (pass it in the first iteration only); with keep_mean candidate 0 is the
        mean itself, so the warm start is always scored."""
        u = (mean[:, None] + std[:, None] * noise).clamp_(-1.0, 1.0)       # (B, S, H, A)
        if warm is not None:
            k = min(warm.shape[1], u.shape[1] - 1)
            u[:, u.shape[1] - k:] = warm[:, :k]                             # (B, k, H, A)
        if keep_mean:
            u[:, 0] = mean
        return u

    def evaluate(self, energy: Energy, u: torch.Tensor) -> torch.Tensor:
        """Costs (B, S) of unit candidates u (B, S, H, A); NaN counts as +inf (never selected)."""
        costs = energy(self.to_raw(u))                                      # (B, S)
        if tuple(costs.shape) != tuple(u.shape[:2]):
            raise ValueError(f"{self.who}: the energy returned shape {tuple(costs.shape)} for "
                             f"actions {tuple(u.shape)}; it must return costs (B, S)")
        return costs.to(self.dtype).nan_to_num(nan=float("inf"), posinf=float("inf"))


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather candidates: x (B, S, H, A), idx (B, K) -> (B, K, H, A), on device."""
    B, K = idx.shape
    return x.gather(1, idx[:, :, None, None].expand(B, K, x.shape[2], x.shape[3]))


class BestSoFar:
    """Lowest-cost candidate seen so far per environment, tracked on device (no host sync)."""

    def __init__(self, p: Problem) -> None:
        self.cost = torch.full((p.B,), float("inf"), device=p.device, dtype=p.dtype)  # (B,)
        self.u = torch.zeros(p.B, p.H, p.A, device=p.device, dtype=p.dtype)            # (B, H, A)
        self.trace: list[torch.Tensor] = []

    def update(self, costs: torch.Tensor, u: torch.Tensor, record: bool = False) -> None:
        c, i = costs.min(dim=1)                                             # (B,), (B,)
        better = c < self.cost                                              # (B,)
        self.cost = torch.where(better, c, self.cost)
        self.u = torch.where(better[:, None, None], take(u, i[:, None])[:, 0], self.u)
        if record:
            self.trace.append(self.cost.mean())

    def history(self) -> list[float]:
        # host sync, once per solve and only when record_history is on
        return torch.stack(self.trace).tolist() if self.trace else []


class Deadline:
    """Anytime budget. `expired()` is the only host sync an optimiser's loop may make."""

    def __init__(self, deadline_s: float | None, device: torch.device) -> None:
        if deadline_s is not None and not deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 seconds or None, got {deadline_s}")
        self.limit, self.device, self.t0 = deadline_s, device, time.perf_counter()

    def expired(self, done: int) -> bool:
        """True when another iteration (at the mean pace of the `done` so far) would overrun."""
        if self.limit is None:
            return False
        if self.device.type == "cuda":
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("a deadline needs the host clock: solve with deadline_s=None "
                                   "when capturing a CUDA graph")
            # host sync: wait for the queued GPU work so the clock measures finished iterations.
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - self.t0
        return elapsed + elapsed / max(done, 1) > self.limit

    def elapsed(self) -> float:
        if self.device.type == "cuda":
            if torch.cuda.is_current_stream_capturing():
                return 0.0                       # inside CUDA-graph capture: time the replay instead
            torch.cuda.synchronize(self.device)  # host sync: once per solve, to time it
        return time.perf_counter() - self.t0


def finish(p: Problem, best: BestSoFar, mean_u: torch.Tensor | None, iterations: int,
           planned: int, clock: Deadline, elites_u: torch.Tensor | None = None) -> PlanResult:
    """Package a solve: raw best actions (clipped), its cost (inf where no candidate got a finite one:
    MPCController refuses such a plan, `check_costs`), warm-start material, timing."""
    res = PlanResult(
        actions=p.to_raw(best.u), cost=best.cost, iterations=iterations,
        deadline_missed=iterations < planned,
        mean=None if mean_u is None else p.to_raw(mean_u),
        elites=None if elites_u is None else p.to_raw(elites_u),
        history=best.history(),
    )
    res.latency_s = clock.elapsed()
    return res


def planner_from_config(cfg: dict, **overrides) -> Planner:
    """Build a planner from a configs/planner/<name>.yaml mapping ({name: ..., **fields})."""
    cfg = dict(cfg, **overrides)
    name = cfg.pop("name", None)
    if name is None:
        raise ValueError(f"planner config needs a `name` key (one of {sorted(PLANNERS)})")
    return make_planner(name, **cfg)
