"""State probe of a trained checkpoint on its held-out clips, read two ways; prints one JSON line.

    python -m benchmarks.state_probe --checkpoint runs/repro/reacher_cpu_r2/seed0/train/best.pt

`probe_r2` (worldmodel/training/validation.py) is the held-out R^2 of a ridge map from latents to
the env's pose features (`worldmodel.data.clips.pose_features`: no velocities, which one frame does
not show, and angles as (sin, cos), which a linear map can read). This script scores the same
latents against those and against the raw state (`raw_state`, `pose_features`) on the validation
split and clip subset the training used. `per_feature` reads each pose coordinate on its own, over
every frame of the validation episodes (fitted on the first half of them, scored on the rest):
its R^2, and `nn_error`, the median error of the nearest latent's state (the first half's frame
closest in squared latent distance, as the planner's energy measures it) next to `random_pair_error`
(angles wrapped): a coordinate the energy cannot see has nn_error near random_pair_error, whatever
a linear map reads.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

import numpy as np



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
    out["per_feature"] = per_feature(model, ClipDataset(ds, spec, val_eps), info)
    print(json.dumps(out))
    return out


def per_feature(model: Any, clips: Any, info: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each pose coordinate of every frame of the clips' episodes, read from their latents
    (`read_each`): the nearest latents looked for in the first half of the episodes."""
    from worldmodel.training.validation import encode_rows, episode_rows

    rows, lens = episode_rows(clips)                                        # (N,), (E,)
    half = (int(lens[: len(lens) // 2].sum()) if len(lens) > 1              # frames of the fitting episodes
            else len(rows) // 2)                                            # (one episode: its first half)
    z = encode_rows(model, clips.pixels[rows], 256)                          # (N, D)
    return read_each(z, np.asarray(clips.state[rows], dtype=np.float64), half, info)


def read_each(z: Any, state: np.ndarray, half: int, info: dict[str, Any]) -> dict[str, dict[str, float]]:
    """z (N, D) latents of frames whose states are (N, S), episode after episode. Per pose
    coordinate: the linear probe's R^2 alone (state_probe: fitted on the first N // 2 frames, scored
    on the rest), and the error of the state of the nearest latent among rows [:half] for each row of
    [half:], against a random row's (see the module docstring)."""
    import torch

    from worldmodel.training.validation import state_probe

    z = torch.as_tensor(z).double()
    nearest = torch.cdist(z[half:], z[:half]).argmin(1).numpy()            # (N - half,) into the first rows
    other = np.random.default_rng(0).integers(0, half, len(nearest))
    names, angles = info.get("state_names") or [], set(info.get("angle_dims") or ())
    out = {}
    for d in info["pose_dims"]:
        x = state[:, d]
        feats = np.stack([np.sin(x), np.cos(x)], 1) if d in angles else x[:, None]   # (N, 1 or 2)
        r2 = [state_probe(z[:, None], f[:, None, None]).get("probe_r2", float("nan")) for f in feats.T]
        out[names[d] if d < len(names) else str(d)] = {
            "r2": round(float(np.mean(r2)), 4),
            "nn_error": round(_median_error(x[half:], x[nearest], d in angles), 4),
            "random_pair_error": round(_median_error(x[half:], x[other], d in angles), 4)}
    return out


def _median_error(x: np.ndarray, y: np.ndarray, angle: bool) -> float:
    """Median |x - y| over paired values (N,), wrapped to [0, pi] for an angle."""
    e = x - y
    return float(np.median(np.abs(np.angle(np.exp(1j * e))) if angle else np.abs(e)))


if __name__ == "__main__":
    main()
