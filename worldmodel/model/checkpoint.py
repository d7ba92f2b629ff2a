"""Checkpoints: one torch file holding everything needed to rebuild the model and resume training.

Layout (a plain dict, loadable with torch.load(weights_only=True), so no pickled code ever runs):
    format        "worldmodel-checkpoint"        identifies our files
    version       FORMAT_VERSION                 refused if newer/unknown
    model_config  ModelConfig as a JSON-able dict
    model         model state dict (includes the action normalisation buffers)
    optimizer, scheduler   state dicts or None
    step          int
    extra         dict: trainer state (RNG states, data position, metrics, resolved config ...)
Writes are atomic (temp file + os.replace): a crash mid-save never leaves a truncated checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load and validate a checkpoint written by `save_checkpoint` (weights_only: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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
    return ckpt
