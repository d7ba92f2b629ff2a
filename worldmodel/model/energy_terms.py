"""Composable energy terms: what a planner minimises besides the distance to the goal.

`GoalEnergy(model, terms=[...])` adds each term's weighted cost to the goal distance, so any planner
still sees one energy (actions (B, S, H, chunk) -> costs (B, S)). A term is called with the candidate
actions in raw env units and the latents the model predicts for them:

    term(actions (B, S, H, chunk), latents (B, S, H, D)) -> costs (B, S)

and is bound once to the model (`bind(model)`: frameskip, action width, encoding its own images).
The terms here: `ActionMagnitude` and `ActionRate` (smooth, economical commands), `Avoid` (keep the
predicted path away from given images or latents: a forbidden place, a bad pose) and `LatentCost`
(any callable on the predicted latents). Every weight must be finite and >= 0.
"""
from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor


def _weight(value: float, who: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{who}: weight must be a finite number >= 0, got {value!r}; e.g. weight=0.1")
    return float(value)


class EnergyTerm(ABC):
    """Base of a term: a weight and the model geometry it reads the action chunks with."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = _weight(weight, type(self).__name__)
        self.frameskip, self.action_dim = 1, None

    def bind(self, model: Any) -> "EnergyTerm":
        """Called once by GoalEnergy: the model's frameskip and action width (and any encoding)."""
        self.frameskip, self.action_dim = model.cfg.frameskip, model.cfg.action_dim
        return self

    def steps(self, actions: Tensor) -> Tensor:
        """Chunks (B, S, H, fs*A) -> env steps (B, S, H*fs, A)."""
        B, S, H, C = actions.shape
        return actions.reshape(B, S, H * self.frameskip, C // self.frameskip)

    @abstractmethod
    def __call__(self, actions: Tensor, latents: Tensor) -> Tensor:
        """Candidate chunks (B, S, H, chunk) raw and their predicted latents (B, S, H, D) -> costs (B, S)."""


class ActionMagnitude(EnergyTerm):
    """weight x the mean over env steps of ||a||^2 (raw units): prefers small commands."""

    def __call__(self, actions: Tensor, latents: Tensor) -> Tensor:
        return self.weight * self.steps(actions).float().square().sum(-1).mean(-1)   # (B, S)


class ActionRate(EnergyTerm):
    """weight x the mean over consecutive env steps of ||a_t+1 - a_t||^2: prefers smooth commands."""

    def __call__(self, actions: Tensor, latents: Tensor) -> Tensor:
        a = self.steps(actions).float()                                               # (B, S, T, A)
        if a.shape[2] < 2:
            return a.new_zeros(a.shape[:2])
        return self.weight * (a[:, :, 1:] - a[:, :, :-1]).square().sum(-1).mean(-1)  # (B, S)


class Avoid(EnergyTerm):
    """Keep the predicted path away from forbidden latents: weight x sum over predicted chunks and
    forbidden latents of exp(-mean_sq / radius^2), where mean_sq is their squared latent distance per
    dimension (SIGReg keeps each latent dimension near unit std, so radius ~ 1 reaches about as far
    as a typical frame-to-frame difference; smaller radii forbid a tighter neighbourhood).

    images (N, H, W, 3) uint8 frames showing the forbidden situations (encoded by `bind`), or
    latents (N, D) already encoded."""

    def __init__(self, images: Any = None, latents: Any = None, weight: float = 1.0, radius: float = 1.0) -> None:
        super().__init__(weight)
        if (images is None) == (latents is None):
            raise ValueError("Avoid: pass images (N, H, W, 3) or latents (N, D) of what to keep away from, one of them")
        if not (isinstance(radius, (int, float)) and math.isfinite(radius) and radius > 0):
            raise ValueError(f"Avoid: radius must be a finite number > 0 (latent units per dimension), got {radius!r}")
        self.radius, self._images = float(radius), images
        self.latents = None if latents is None else _finite(torch.as_tensor(latents, dtype=torch.float32), "latents")

    def bind(self, model: Any) -> "Avoid":
        super().bind(model)
        device = next(model.parameters()).device
        if self._images is not None:
            img = torch.as_tensor(np.asarray(self._images), device=device)
            size = model.cfg.image_size
            if img.dim() != 4 or tuple(img.shape[1:]) != (size, size, 3):
                raise ValueError(f"Avoid: images must be (N, {size}, {size}, 3) frames like the model's, got "
                                 f"{tuple(img.shape)}; fit camera frames with worldmodel.report.video.fit_frame")
            with torch.no_grad():
                self.latents = model.encode(img).float()                              # (N, D)
        z = self.latents.to(device)
        if z.dim() != 2 or z.shape[1] != model.cfg.latent_dim:
            raise ValueError(f"Avoid: latents must be (N, {model.cfg.latent_dim}), got {tuple(z.shape)}")
        self.latents = z
        return self

    def __call__(self, actions: Tensor, latents: Tensor) -> Tensor:
        z = latents.float()                                                           # (B, S, H, D)
        d2 = (z[..., None, :] - self.latents).square().mean(-1)                       # (B, S, H, N)
        return self.weight * torch.exp(-d2 / self.radius ** 2).sum((-1, -2))         # (B, S)


class LatentCost(EnergyTerm):
    """weight x fn(latents (B, S, H, D), actions (B, S, H, chunk)) -> (B, S): any cost of the
    predicted latents (a probe's reading, a learned constraint)."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], weight: float = 1.0) -> None:
        super().__init__(weight)
        if not callable(fn):
            raise TypeError(f"LatentCost: fn must be callable (latents, actions) -> (B, S), got {type(fn).__name__}")
        self.fn = fn

    def __call__(self, actions: Tensor, latents: Tensor) -> Tensor:
        out = self.fn(latents, actions)
        if tuple(out.shape) != tuple(latents.shape[:2]):
            raise ValueError(f"LatentCost: {getattr(self.fn, '__name__', self.fn)} returned shape "
                             f"{tuple(out.shape)}; it must return costs (B, S) = {tuple(latents.shape[:2])}")
        return self.weight * out.float()


def _finite(x: Tensor, what: str) -> Tensor:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"Avoid: {what} hold NaN or Inf; pass finite encoder latents")
    return x


def load_frames(paths: Sequence[str]) -> np.ndarray:
    """Images to avoid from files: .npy / .npz arrays (N, H, W, 3) or (H, W, 3) uint8, or PNGs."""
    frames = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"no image file {p}; pass .npy/.npz frames (N, H, W, 3) uint8 or .png files")
        if p.suffix in (".npy", ".npz"):
            arr = np.load(p)
            arr = arr[arr.files[0]] if p.suffix == ".npz" else arr
        else:
            from PIL import Image
            arr = np.asarray(Image.open(p).convert("RGB"))
        frames.append(arr[None] if arr.ndim == 3 else arr)
    return np.concatenate(frames).astype(np.uint8)


def load_callable(spec: str) -> Callable:
    """'package.module:function' -> the function (LatentCost's fn from a config)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"cost={spec!r}: write module:function, e.g. cost=my_costs:keep_left")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cost={spec!r}: cannot import it ({e}); put the module on PYTHONPATH") from None


def terms_from_config(cfg: Any) -> list[EnergyTerm]:
    """`wm eval terms.*` (worldmodel.evaluation.config.TermsConfig) -> the terms it asks for."""
    terms: list[EnergyTerm] = []
    if cfg.action:
        terms.append(ActionMagnitude(cfg.action))
    if cfg.rate:
        terms.append(ActionRate(cfg.rate))
    if cfg.avoid:
        terms.append(Avoid(images=load_frames(cfg.avoid), weight=cfg.avoid_weight, radius=cfg.avoid_radius))
    if cfg.cost:
        terms.append(LatentCost(load_callable(cfg.cost), cfg.cost_weight))
    return terms
