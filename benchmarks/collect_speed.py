"""Collection throughput: real `wm collect` runs, 64 px, workers=1 and workers=2.

    python -m benchmarks.collect_speed [--envs tworoom pusht] [--workers 1 2] [--repeats 3]

Prints one JSON line per (env, workers): the median over `--repeats` runs (after one warm-up run
that also starts the fork server) of frames written per second of collection wall time, and per
worker. Each run collects `--frames-per-worker` frames per worker into a fresh temp dir, staging,
packing and fsyncing included. Also prints one `load` line: how fast `load_dataset` reads the last
dataset back into memory. `load_avg` is the 1-minute load average at the end: on a shared machine,
numbers taken under load are not the machine's capacity.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

from worldmodel.data.collector import collect  # noqa: E402
from worldmodel.data.config import CollectConfig  # noqa: E402
from worldmodel.config import load  # noqa: E402
from worldmodel.data.dataset import load_dataset  # noqa: E402


def collect_once(env: str, workers: int, frames_per_worker: int, episode_len: int, image_size: int,
                 out: Path) -> dict:
    episodes = max(workers, round(frames_per_worker * workers / episode_len))
    cfg = load(CollectConfig, "collect", [f"env={env}", f"workers={workers}", f"episodes={episodes}",
                                          f"episode_len={episode_len}", f"image_size={image_size}",
                                          f"out={out}", "progress=false", "seed=0"])
    return collect(cfg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", nargs="+", default=["tworoom", "pusht"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames-per-worker", type=int, default=3000)
    ap.add_argument("--episode-len", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    last = None
    with tempfile.TemporaryDirectory(prefix="wm-collect-bench-") as tmp:
        for env in args.envs:
            for w in args.workers:
                rates = []
                for r in range(args.repeats + 1):              # run 0 is the warm-up
                    out = Path(tmp) / f"{env}-w{w}-r{r}"
                    s = collect_once(env, w, args.frames_per_worker, args.episode_len, args.image_size, out)
                    if r:
                        rates.append(s["frames"] / s["seconds"])
                    last = out
                fps = statistics.median(rates)
                print(json.dumps({"bench": "collect", "env": env, "workers": w, "image_size": args.image_size,
                                  "frames_per_run": s["frames"], "frames_per_s": round(fps, 1),
                                  "frames_per_s_per_worker": round(fps / w, 1), "median_of": len(rates),
                                  "runs_frames_per_s": [round(x, 1) for x in rates],
                                  "load_avg": round(os.getloadavg()[0], 2)}), flush=True)
        if last is not None:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ds = load_dataset(last, columns=("pixels", "action", "state"))
                times.append(time.perf_counter() - t0)
            t = statistics.median(times)
            nbytes = sum(a.nbytes for a in ds.columns.values())
            print(json.dumps({"bench": "load", "path": "last collection", "frames": ds.num_frames,
                              "frames_per_s": round(ds.num_frames / t, 1), "mb_per_s": round(nbytes / t / 2**20, 1),
                              "median_of": len(times)}), flush=True)


if __name__ == "__main__":
    main()
