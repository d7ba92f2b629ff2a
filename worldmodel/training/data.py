"""`wm train`'s data: load the dataset, check it fits the model, split it into train/val clips.

Every check here runs before the run directory is touched, so data that cannot train leaves no
output behind.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from worldmodel.data.clips import ClipDataset, ClipSpec, action_problems, split_episodes
from worldmodel.model.config import ModelConfig
from worldmodel.training.config import TrainConfig


def prepare_data(cfg: TrainConfig) -> tuple[ModelConfig, ClipDataset, ClipDataset | None, dict]:
    """Load the dataset, check it fits the model (refusing before any training), split by episode.

    Returns the model config with action_dim filled from the data, train and val clips, and meta.
    """
    from worldmodel.data.dataset import load_dataset

    if not cfg.data.path:
        raise ValueError("no dataset given: pass data=PATH (a `wm collect` directory or a LeWM .h5 file)")
    ds = load_dataset(cfg.data.path, columns=("pixels", "action", "state"), episodes=cfg.data.episodes)
    check_pixels(ds.pixels, cfg)
    problems = action_problems(ds.action, ds.ep_len, ds.ep_offset, ds.meta)
    check_action_bounds(problems, ds.meta, cfg.data.path)
    model_cfg = dataclasses.replace(cfg.model, action_dim=int(ds.action.shape[1]))
    spec = ClipSpec(model_cfg.history, cfg.data.n_preds, model_cfg.frameskip)
    short = int((ds.ep_len < spec.min_episode_len).sum())
    train_eps, val_eps = split_episodes(ds.ep_len, spec, cfg.data.val_fraction, cfg.data.split_seed)
    if short:
        print(f"note: {short} of {ds.num_episodes} episodes are shorter than the "
              f"{spec.min_episode_len} rows a clip needs and are skipped")
    train = ClipDataset(ds, spec, train_eps)
    val = ClipDataset(ds, spec, val_eps) if len(val_eps) else None
    if len(train) == 0:
        raise ValueError(f"{cfg.data.path}: no training clip survives (NaN actions?); check with `wm inspect`")
    if problems["nonfinite"]:
        print(f"note: {problems['nonfinite']} action rows inside episodes are NaN/Inf; clips touching them are skipped")
    if cfg.batch_size > len(train):
        raise ValueError(f"batch_size={cfg.batch_size} but the data hold only {len(train)} training clips (every "
                         f"clip would repeat within a batch): pass batch_size<={len(train)}, or collect more episodes")
    return model_cfg, train, val, ds.meta


def check_pixels(pixels: Any, cfg: TrainConfig) -> None:
    """Refuse frames that are not (N, H, W, 3) uint8 at the model's image size; the error says which
    model.image_size (and patch size) would fit them."""
    h, w = pixels.shape[1:3]
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"{cfg.data.path}: pixels must be (N, H, W, 3) uint8, got "
                         f"{pixels.shape} {pixels.dtype}")
    if (h, w) != (cfg.model.image_size, cfg.model.image_size):
        patch = cfg.model.patch_size
        fit = (f"pass model.image_size={h}" if h % patch == 0 else
               f"pass model.image_size={h} with a model.patch_size dividing it (e.g. "
               f"{max(d for d in range(1, max(1, h // 8) + 1) if h % d == 0)}; this model's {patch} does not)")
        raise ValueError(f"dataset frames are {h}x{w} but model.image_size={cfg.model.image_size}: {fit}, or "
                         f"re-collect with image_size={cfg.model.image_size}")


def check_action_bounds(problems: dict[str, Any], meta: dict[str, Any], path: str) -> None:
    """Refuse action rows outside the bounds the collection recorded (`action_problems`' count)."""
    if problems["out_of_bounds"]:
        ep, t = problems["first_out_of_bounds"]
        raise ValueError(f"{path}: {problems['out_of_bounds']} action rows lie outside the recorded bounds "
                         f"[{meta['action_low']}, {meta['action_high']}] (first: episode {ep}, step {t}); "
                         "they would skew the action normalisation and can never be planned: repair or drop those "
                         "episodes (data.episodes=...), or re-collect (`wm inspect` lists the problems)")
