"""A training run's directory (`out=`): claiming it, deciding between a fresh start and a resume,
and refusing a resume whose model or fixed settings differ from the checkpoint's.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from worldmodel.config import to_dict
from worldmodel.io import check_owner, exclusive_lock, output_owner
from worldmodel.model.config import ModelConfig
from worldmodel.training.config import TrainConfig

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.json", "tb", "curves.png")
# What a resumed run must keep: the optimiser state, schedule, data order and split come from the
# checkpoint, so a changed value here would be silently ignored (steps, stop_at, logging, device and
# compile settings may change).
RESUME_FIXED = ("lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "sigreg_weight",
                "open_loop_weight", "open_loop_detach", "sigreg_directions", "sigreg_knots", "batch_size",
                "accum_steps", "seed", "precision")
RESUME_FIXED_DATA = ("n_preds", "val_fraction", "split_seed", "episodes")


def claim_out(cfg: TrainConfig, rank: int) -> Any:
    """Refuse a dataset directory as out=; on rank 0 create out= and take its lock (one `wm train`
    per out= at a time), returned for the caller to close, and drop saves cut short by a kill -9."""
    from worldmodel.data import dataset as D

    out = Path(cfg.out)
    if (out / D.META).exists() or any(out.glob("shard_*.h5")) or output_owner(out) in ("wm collect", "DatasetWriter"):
        raise FileExistsError(f"out={out} is a dataset (meta.json, shards); train into another out=, "
                              f"e.g. out=runs/{out.name}")
    if rank != 0:
        return None
    out.mkdir(parents=True, exist_ok=True)
    lock = exclusive_lock(out / ".train.lock", f"another `wm train` is writing {out}; wait for it to "
                          "finish, or kill it and re-run with resume=true (or choose another out=)")
    for stale in out.glob("*.pt.*.tmp"):            # no writer now: we hold the lock
        stale.unlink()
    return lock


def resume_point(cfg: TrainConfig, rank: int) -> Path | None:
    """The checkpoint to resume from under resume=true (the newer of last.pt and best.pt: a kill -9
    between the two saves of an improving step leaves best.pt ahead, and it holds the whole trainer
    state), or None for a fresh run. Refuses to clobber a run unless overwrite=true, and then only a
    run `wm train` marked as its own (io.mark_output); rank 0 then deletes that run's files."""
    out = Path(cfg.out)
    if cfg.resume:
        found = [p for p in (out / "last.pt", out / "best.pt") if p.exists()]
        if found:
            return max(found, key=_saved_step)        # ties: last.pt (listed first)
        if rank == 0:
            print(f"resume=true but {out / 'last.pt'} does not exist yet: starting a fresh run")
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if existing and not cfg.resume and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a training run ({', '.join(existing)}); pass "
                              "resume=true to continue it, overwrite=true to start over, or another out=")
    if existing:
        check_owner(out, "wm train")
    if rank == 0:
        for n in existing:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


def _saved_step(path: Path) -> int:
    """The step a checkpoint was saved at, read without loading its tensors (-1: unreadable, and the
    full load then names the problem)."""
    from worldmodel.model.checkpoint import read_mapped

    try:
        return int(read_mapped(path)["step"])
    except Exception:  # noqa: BLE001 - any damage: let the other file win
        return -1


def check_resume(ckpt: dict, model_cfg: ModelConfig, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume the checkpoint `ckpt` (read from `path`) with another model or with different
    training settings."""
    saved_model = ModelConfig(**ckpt["model_config"]).to_dict()     # a field added since: its default then
    if saved_model != model_cfg.to_dict():
        diff = {k: (saved_model.get(k), v) for k, v in model_cfg.to_dict().items() if saved_model.get(k) != v}
        raise ValueError(f"resume=true but the model differs from {path} "
                         f"(checkpoint vs now: {diff}); use the run's model overrides or a new out=")
    saved, now = ckpt["extra"]["config"], to_dict(cfg)
    # A setting added after the checkpoint was written had its default then.
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in RESUME_FIXED}
    pairs = [(k, saved.get(k, default[k]), now[k]) for k in RESUME_FIXED] + \
            [(f"data.{k}", saved.get("data", {}).get(k), now["data"][k]) for k in RESUME_FIXED_DATA]
    diff = {k: (old, new) for k, old, new in pairs if old != new}
    if diff:
        raise ValueError(f"resume=true but the training settings differ from {path} (checkpoint vs "
                         f"now: {diff}); resume with the run's settings, or start a new run with "
                         "overwrite=true or another out=")
