"""Clip loader throughput: clips/s of LeWM-shaped clips through the batched gather.

Builds (or takes, --data PATH) a dataset of 64 px frames, then measures 4-frame clips (history 3 +
1 prediction, frameskip 5) in batches of 128: the bare `ClipDataset.get_batch` gather, and the
`ClipLoader` with its prefetch thread. Prints one JSON line per figure (median of --repeats runs).

    python -m benchmarks.data_speed [--data PATH] [--episodes 200] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def build_dataset(root: Path, episodes: int, length: int, size: int, seed: int = 0) -> Path:
    """A real wm-hdf5-v1 directory written through the dataset module (staged, packed shard)."""
    from worldmodel.data.dataset import FORMAT, pack_shard, stage_episode
    from worldmodel.io import write_json_atomic

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / "meta.json", {"format": FORMAT, "env": "synthetic", "image_size": size,
                                           "action_dim": 2, "frameskip": 1, "episodes": episodes})
    staged = []
    for e in range(episodes):
        action = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
        action[-1] = np.nan
        staged.append(stage_episode(root, {
            "pixels": rng.integers(0, 256, (length, size, size, 3), dtype=np.uint8),
            "action": action, "state": rng.normal(size=(length, 4)),
            "ep_index": e, "ep_seed": e}))
    pack_shard(root, staged, {})
    return root


def measure(fn, batch: int, seconds: float) -> float:
    fn()                                                      # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="existing dataset (default: build one in a temp dir)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--length", type=int, default=92, help="rows per episode (TwoRoom ~92)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()

    import torch

    from worldmodel.data.clips import ClipDataset, ClipLoader, ClipSampler, ClipSpec
    from worldmodel.data.dataset import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(a.data) if a.data else build_dataset(Path(tmp) / "d", a.episodes, a.length, a.size)
        t0 = time.perf_counter()
        ds = load_dataset(path, columns=("pixels", "action"))
        load_s = time.perf_counter() - t0
    clips = ClipDataset(ds, ClipSpec(history=3, n_preds=1, frameskip=5))
    base = {"frames": ds.num_frames, "image": list(ds.pixels.shape[1:]), "clip_frames": 4,
            "frameskip": 5, "batch": a.batch, "torch_threads": torch.get_num_threads()}
    print(json.dumps({"figure": "load_dataset_MB_per_s", "value": round(ds.pixels.nbytes / 2**20 / load_s, 1),
                      "seconds": round(load_s, 3), **base}))
    sampler = ClipSampler(len(clips), a.batch, seed=0)
    gather = [measure(lambda: clips.get_batch(sampler.next_indices()), a.batch, a.seconds)
              for _ in range(a.repeats)]
    print(json.dumps({"figure": "clips_per_s", "loader": "get_batch", "value": round(statistics.median(gather)),
                      "runs": [round(x) for x in gather], "target": 20000, **base}))
    for prefetch in (2,):
        runs = []
        for _ in range(a.repeats):
            loader = ClipLoader(clips, ClipSampler(len(clips), a.batch, seed=0), prefetch=prefetch)
            runs.append(measure(lambda: next(loader), a.batch, a.seconds))
            loader.close()
        print(json.dumps({"figure": "clips_per_s", "loader": f"ClipLoader(prefetch={prefetch})",
                          "value": round(statistics.median(runs)), "runs": [round(x) for x in runs],
                          "target": 20000, **base}))


if __name__ == "__main__":
    main()
