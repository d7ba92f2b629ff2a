"""What every planner shares: the energy protocol, the result type, bounds, and the registry.

A planner sees only an energy: a callable mapping a batch of candidate action sequences
(B, S, H, A) to costs (B, S). It knows nothing about world models, images or simulators.
Here A is the per-step action width the energy expects (for a world model: frameskip x env A).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

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
        return Bounds(lo, hi)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)

    @property
    def center(self) -> torch.Tensor:
        return (self.low + self.high) / 2

    @property
    def half_range(self) -> torch.Tensor:
        return (self.high - self.low) / 2


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
        raise ValueError(f"unknown planner {name!r}; choose one of {sorted(PLANNERS)}")
    return PLANNERS[name](**kwargs)
