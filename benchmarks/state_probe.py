"""State probe of a trained checkpoint on its held-out clips, read two ways; prints one JSON line.

    python -m benchmarks.state_probe --checkpoint runs/repro/reacher_cpu_r2/seed0/train/best.pt

`probe_r2` (worldmodel/training/validation.py) is the held-out R^2 of a ridge map from latents to
the env's pose features (`worldmodel.data.clips.pose_features`: no velocities, which one frame does
not show, and angles as (sin, cos), which a linear map can read). This script scores the same
latents against those and against the raw state (`raw_state`, `pose_features`) on the validation
split and clip subset the training used.
"""
from __future__ import annotations

import argparse
import contextlib
import json



def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a `wm train` best.pt / last.pt")
    p.add_argument("--data", default=None, help="its dataset (default: the path it was trained on)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)

    import torch

    from worldmodel.model.checkpoint import load_checkpoint
    from worldmodel.data.clips import ClipDataset, ClipSpec, split_episodes
    from worldmodel.data.dataset import load_dataset
    from worldmodel.evaluation.tasks import make_env
    from worldmodel.model.world_model import WorldModel
    from worldmodel.training.validation import evaluate

    torch.set_num_threads(a.threads)
    ckpt = load_checkpoint(a.checkpoint, map_location="cpu")
    cfg = (ckpt.get("extra") or {}).get("config") or {}
    if "data" not in cfg:
        raise SystemExit(f"{a.checkpoint} records no training config; is it a `wm train` checkpoint?")
    model = WorldModel.from_loaded(ckpt, "cpu", source=a.checkpoint)
    ds = load_dataset(a.data or cfg["data"]["path"], columns=("pixels", "action", "state"))
    if not ds.meta.get("env"):
        raise SystemExit("the dataset names no env: there is no pose record to read")
    spec = ClipSpec(model.cfg.history, cfg["data"]["n_preds"], model.cfg.frameskip)
    _, val_eps = split_episodes(ds.ep_len, spec, cfg["data"]["val_fraction"], cfg["data"]["split_seed"])
    env = make_env(ds.meta["env"], ds.meta, model.cfg.image_size)
    info = env.env_info().to_json()             # today's record (older datasets were written without it)
    env.close()
    out = {"bench": "state_probe", "checkpoint": a.checkpoint, "env": ds.meta["env"],
           "pose_dims": info["pose_dims"], "angle_dims": info["angle_dims"]}
    for label, record in (("raw_state", None), ("pose_features", info)):
        ds.meta.pop("env_info", None)
        if record:
            ds.meta["env_info"] = record
        res = evaluate(model, ClipDataset(ds, spec, val_eps), int(cfg.get("eval_clips", 1024)), 64,
                       torch.device("cpu"), contextlib.nullcontext())
        out[f"probe_r2_{label}"] = round(res["probe_r2"], 4)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
