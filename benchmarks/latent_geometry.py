"""Latent geometry: does the goal energy grow with the distance to the goal, and how far out?

Planning minimises ||z_hat - z_goal||^2, so it can only steer toward a goal from as far away as the
latent distance keeps growing with the true distance. This script renders goal images of held-out
expert states, moves chosen state coordinates (default: the first two, TwoRoom's agent x, y;
Push-T's pusher) by a fixed displacement in a random direction, and reports the median squared
latent distance per displacement next to that of unrelated state pairs. A distance that saturates
near the random-pair level at small displacements means an energy that is flat beyond them.

    python benchmarks/latent_geometry.py --checkpoint runs/demo/train/best.pt
    python benchmarks/latent_geometry.py --checkpoint runs/pusht/best.pt --dims 2 3 --scales 0.02 0.05 0.1

stdout: one JSON line. The states come from expert rollouts with seeds never used for training
(the eval seeds); only goal images are encoded, the model never sees a state.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--env", default=None, help="default: the env of the checkpoint's training data")
    p.add_argument("--dims", type=int, nargs="+", default=[0, 1], help="state coordinates to displace")
    p.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0],
                   help="displacements, in state units (m for positions)")
    p.add_argument("--points", type=int, default=64, help="base states")
    p.add_argument("--seed", type=int, default=1000003, help="held-out rollout seed (eval's default)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    import torch

    import envs
    from worldmodel.collect import rollout
    from worldmodel.model import load_trained

    model, meta, env_name = load_trained(a.checkpoint, a.device, a.env)
    env = envs.make(env_name, image_size=model.cfg.image_size)
    rng = np.random.default_rng(a.seed)

    states = []
    for i in range((a.points + 9) // 10):              # 10 states per held-out expert episode
        s = rollout(env, meta.get("policy") or "expert", a.seed, i, 100)["state"]   # (101, S)
        states.extend(s[rng.choice(len(s), 10, replace=False)])
    base = np.stack(states[:a.points])                 # (P, S)
    if max(a.dims) >= base.shape[1]:
        raise SystemExit(f"--dims {a.dims}: {env_name} states have {base.shape[1]} coordinates")

    def encode(st: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model.encode(np.stack([env.goal_image(x) for x in st])).float()   # (P, D)

    def displaced(d: float) -> np.ndarray:
        u = rng.normal(size=(len(base), len(a.dims)))
        u /= np.linalg.norm(u, axis=1, keepdims=True)  # random unit direction in the chosen dims
        out = base.copy()
        out[:, a.dims] += d * u
        return out

    z = encode(base)
    rows = {f"{d:g}": float((encode(displaced(d)) - z).square().sum(-1).median()) for d in a.scales}
    rand = float((z - z[rng.permutation(len(z))]).square().sum(-1).median())
    res = {"bench": "latent_geometry", "checkpoint": a.checkpoint, "env": env_name, "dims": a.dims,
           "points": len(base), "median_sq_dist_by_displacement": rows, "median_sq_dist_random_pairs": rand,
           "fraction_of_random": {k: round(v / max(rand, 1e-12), 3) for k, v in rows.items()}}
    env.close()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
