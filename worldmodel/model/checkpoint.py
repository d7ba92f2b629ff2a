"""Checkpoints: one torch file holding everything needed to rebuild the model and resume training.

Layout (a plain dict, loadable with torch.load(weights_only=True), so no pickled code ever runs):
    format        "worldmodel-checkpoint"        identifies our files
    version       FORMAT_VERSION                 refused if newer/unknown
    model_config  ModelConfig as a JSON-able dict
    model         model state dict (includes the action normalisation buffers)
    optimizer, scheduler   state dicts or None
    step          int
    extra         dict: trainer state (RNG states, data position, metrics, resolved config ...)
    digest        sha256 of everything above (`payload_digest`), verified at load
Writes are atomic (temp file + os.replace): a crash mid-save never leaves a truncated checkpoint.
Loading refuses, before any model is built: a digest mismatch (bytes changed since the save), a
model_config whose weights' shapes differ from the file's (so a small file cannot declare a huge
model), and NaN/Inf weights, each named. A checkpoint written before digests loads unchecked.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldmodel.io import write_atomic

FORMAT = "worldmodel-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_config", "model", "optimizer", "scheduler", "step", "extra")


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of ours; the message says what is wrong."""


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: Any = None,
                    scheduler: Any = None, step: int = 0, extra: dict | None = None) -> Path:
    """Atomically write a checkpoint of `model` (a WorldModel, or a DDP/compiled wrapper of one)."""
    core = getattr(model, "module", model)                 # unwrap DistributedDataParallel
    core = getattr(core, "_orig_mod", core)                # unwrap torch.compile
    if not hasattr(core, "cfg") or not hasattr(core.cfg, "to_dict"):
        raise TypeError("save_checkpoint needs a WorldModel (with .cfg: ModelConfig)")
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model_config": core.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in core.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "extra": dict(extra or {}),
    }
    bad = non_finite(payload["model"])
    if bad:
        raise CheckpointError(f"refusing to save {path}: weights {', '.join(bad[:4])} hold NaN/Inf (the run "
                              "diverged); the earlier checkpoint is left in place")
    payload["digest"] = payload_digest(payload)
    return write_atomic(path, lambda f: torch.save(payload, f),
                        "free space, then re-run with resume=true (the earlier checkpoint is intact)")


def rewrite_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Atomically write back a loaded checkpoint dict after changing its `extra` (a new digest)."""
    payload = {k: v for k, v in ckpt.items() if k != "digest"}
    payload["digest"] = payload_digest(payload)
    return write_atomic(path, lambda f: torch.save(payload, f), "free space (the checkpoint is intact)")


def payload_digest(payload: dict) -> str:
    """sha256 over every key of a checkpoint but "digest": each tensor's name, dtype, shape and bytes,
    every other value's repr, in the dict's order (kept by torch.save / torch.load)."""
    h = hashlib.sha256()

    def walk(key: str, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(f"{key}:dict{len(x)}".encode())
            for k, v in x.items():
                walk(f"{key}/{k!r}", v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{key}:{type(x).__name__}{len(x)}".encode())
            for i, v in enumerate(x):
                walk(f"{key}/{i}", v)
        else:
            h.update(f"{key}={x!r}".encode())

    for k, v in payload.items():
        if k != "digest":
            walk(k, v)
    return h.hexdigest()


def non_finite(state: dict) -> list[str]:
    """Names of the floating-point tensors in `state` holding NaN or Inf."""
    return [k for k, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()
            and not bool(torch.isfinite(t).all())]


def require_checkpoint(path: str, command: str) -> None:
    """Config-time check of a `checkpoint=` value: given, and a file (a run directory names its best.pt)."""
    if not path:
        raise ValueError(f"checkpoint is required: wm {command} checkpoint=runs/<name>/best.pt")
    p = Path(path)
    if p.is_dir():
        inside = [n for n in ("best.pt", "last.pt") if (p / n).is_file()]
        hint = f"pass checkpoint={p / inside[0]}" if inside else "it holds no best.pt or last.pt"
        raise FileNotFoundError(f"checkpoint {path!r} is a directory; {hint}")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {path!r} does not exist; train one with "
                                "`wm train data=... out=...` (it writes best.pt and last.pt)")


def read_mapped(path: str | os.PathLike) -> Any:
    """torch.load(weights_only) with the tensors memory-mapped from the file, privately (writes to them
    never reach the file), so checks read only what they need before any tensor is copied."""
    import mmap

    with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load and validate a checkpoint written by `save_checkpoint` (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = read_mapped(path)
    except Exception as e:  # corrupt zip, text file, pickle with code, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in first:        # torch's advice to load with weights_only=False runs the file's code
            first = f"{type(e).__name__}: not tensors and plain containers (a pickle with code, or no torch file)"
        raise CheckpointError(
            f"{path} is not a readable worldmodel checkpoint (torch.load with weights_only=True "
            f"failed: {first}). It may be truncated or corrupt, or not a checkpoint at all; "
            f"re-save it with worldmodel.model.checkpoint.save_checkpoint.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a worldmodel checkpoint (no format={FORMAT!r} marker); "
            f"pass a file written by `wm train` / save_checkpoint.")
    version = ckpt.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this code reads version "
            f"{FORMAT_VERSION}. Use the matching worldmodel release or re-train.")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint key(s) {missing}; the file is damaged.")
    if not isinstance(ckpt["model_config"], dict) or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: model_config and model must be dicts; the file is damaged.")
    _check_shapes(path, ckpt)
    if "digest" in ckpt and payload_digest(ckpt) != ckpt["digest"]:
        raise CheckpointError(f"{path} is damaged: its contents no longer match the sha256 digest written with "
                              "it (bytes changed on disk or in transfer); use another checkpoint of the run "
                              "(best.pt / last.pt) or copy it again")
    bad = non_finite(ckpt["model"])
    if bad:
        raise CheckpointError(f"{path}: weights {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''} hold NaN/Inf "
                              "(the run diverged before this save); use an earlier checkpoint or re-train with a "
                              "lower lr")
    if map_location is not None and torch.device(map_location).type != "cpu":
        ckpt = _to(ckpt, torch.device(map_location))
    return ckpt


def weight_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
    """The state dict's shapes a ModelConfig builds, on torch's meta device (nothing allocated)."""
    from worldmodel.model.world_model import WorldModel

    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WorldModel(model_config).state_dict().items()}


def _check_shapes(path: Path, ckpt: dict) -> None:
    """Refuse a model_config that does not build a model of exactly the file's weight shapes, checked on
    torch's meta device (nothing allocated): a damaged or doctored config never costs memory."""
    from worldmodel.model.config import ModelConfig

    try:
        want = weight_shapes(ModelConfig(**ckpt["model_config"]))
    except Exception as e:  # noqa: BLE001 - any config the model refuses
        raise CheckpointError(f"{path}: its model_config does not build a WorldModel ({type(e).__name__}: {e}); "
                              "use the worldmodel version that wrote it") from None
    have = {k: tuple(v.shape) for k, v in ckpt["model"].items() if isinstance(v, torch.Tensor)}
    if have != want:
        diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        raise CheckpointError(f"{path}: the weights do not match its model_config ({len(diff)} tensors differ, "
                              f"e.g. {diff[0]}: file {have.get(diff[0])} vs config {want.get(diff[0])}); the "
                              "file is damaged or from another worldmodel version")


def _to(x: Any, device: torch.device) -> Any:
    """`x`'s tensors moved to `device` (dicts, lists and tuples rebuilt)."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x
