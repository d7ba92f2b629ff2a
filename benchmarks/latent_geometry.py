"""Latent geometry: does the goal energy grow with the distance to the goal, and how far out?

Planning can only steer toward a goal from as far as the latent distance keeps growing with the
true distance. This script displaces chosen state coordinates of held-out expert states and
reports the median squared latent distance per displacement next to that of unrelated pairs, with
two references: the same on the rendered pixels (what the encoder could have seen), and the
predictor's open-loop error up to the planning horizon. With `--tolerance` (the env's success
radius in those coordinates) `resolution_ratio` = that error at the horizon / the energy of a
tolerance-sized displacement: above 1, success is lost in the model's error.

    python -m benchmarks.latent_geometry --checkpoint runs/demo/train/best.pt
    python -m benchmarks.latent_geometry --checkpoint runs/pusht/best.pt --dims 2 3 --scales 0.02 0.05 0.1

stdout: one JSON line. Only images are encoded; the states come from eval-seed rollouts.
"""
from __future__ import annotations

import argparse
import json

import numpy as np



def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--env", default=None, help="default: the env of the checkpoint's training data")
    p.add_argument("--dims", type=int, nargs="+", default=[0, 1], help="state coordinates to displace")
    p.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0],
                   help="displacements, in state units (m for positions)")
    p.add_argument("--points", type=int, default=64, help="base states")
    p.add_argument("--seed", type=int, default=1000003, help="held-out rollout seed (eval's default)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="success radius in the displaced coordinates: adds it to --scales and reports resolution_ratio")
    p.add_argument("--horizon", type=int, default=5, help="chunks of open-loop rollout (eval's horizon)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    if a.tolerance is not None and a.tolerance not in a.scales:
        a.scales = sorted([*a.scales, a.tolerance])

    import torch

    from worldmodel.data.rollout import rollout
    from worldmodel.evaluation.tasks import make_env
    from worldmodel.model.world_model import load_trained

    model, meta, env_name = load_trained(a.checkpoint, a.device, a.env)
    env = make_env(env_name, meta, model.cfg.image_size)
    rng = np.random.default_rng(a.seed)

    episodes, states = [], []
    for i in range((a.points + 9) // 10):              # 10 states per held-out expert episode
        ep = rollout(env, meta.get("policy") or "expert", a.seed, i, 100, meta.get("policy_kwargs"))
        episodes.append(ep)
        s = ep["state"]                                # (101, S)
        states.extend(s[rng.choice(len(s), 10, replace=False)])
    base = np.stack(states[:a.points])                 # (P, S)
    if max(a.dims) >= base.shape[1]:
        raise SystemExit(f"--dims {a.dims}: {env_name} states have {base.shape[1]} coordinates")

    def render(st: np.ndarray) -> np.ndarray:
        return np.stack([env.goal_image(x) for x in st])                 # (P, H, W, 3) uint8

    def encode(px: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model.encode(px).float()                              # (P, D)

    def sq(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
        """Median over rows of the squared distance; pixels are scaled to [0, 1]."""
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
        return float((x - y).square().flatten(1).sum(-1).median())

    def displaced(d: float) -> np.ndarray:
        u = rng.normal(size=(len(base), len(a.dims)))
        u /= np.linalg.norm(u, axis=1, keepdims=True)  # random unit direction in the chosen dims
        out = base.copy()
        out[:, a.dims] += d * u
        return out

    px = render(base)
    z = encode(px)
    rows, px_rows = {}, {}
    for d in a.scales:
        moved = render(displaced(d))
        rows[f"{d:g}"] = sq(encode(moved), z)
        px_rows[f"{d:g}"] = sq(moved / 255.0, px / 255.0)
    perm = rng.permutation(len(z))
    rand, rand_px = sq(z, z[perm]), sq(px / 255.0, px[perm] / 255.0)

    err, hold = rollout_error(model, episodes, a.horizon, rng)
    res = {"bench": "latent_geometry", "checkpoint": a.checkpoint, "env": env_name, "dims": a.dims,
           "points": len(base), "median_sq_dist_by_displacement": rows, "median_sq_dist_random_pairs": rand,
           "fraction_of_random": {k: round(v / max(rand, 1e-12), 3) for k, v in rows.items()},
           "pixel_fraction_of_random": {k: round(v / max(rand_px, 1e-12), 3) for k, v in px_rows.items()},
           "rollout_error_fraction_of_random": {
               "by_chunk": [round(e / max(rand, 1e-12), 4) for e in err],
               "no_change": [round(h / max(rand, 1e-12), 4) for h in hold],
               "starts": len(episodes) * 8, "frameskip": model.cfg.frameskip}}
    if a.tolerance is not None:
        res["tolerance"] = a.tolerance
        res["resolution_ratio"] = round(err[-1] / max(rows[f"{a.tolerance:g}"], 1e-12), 3)
    env.close()
    print(json.dumps(res))
    return res


def rollout_error(model, episodes: list[dict], horizon: int, rng: np.random.Generator
                  ) -> tuple[list[float], list[float]]:
    """Open-loop prediction error after each of `horizon` chunks, from 8 random starts per held-out
    episode, with the actions really taken: medians of ||z_hat_k - z_k||^2 and of ||z_0 - z_k||^2."""
    import torch

    fs, h = model.cfg.frameskip, model.cfg.history
    hist, a_hist, acts, future = [], [], [], []
    for ep in episodes:
        n = len(ep["pixels"])
        lo, hi = (h - 1) * fs, n - 1 - horizon * fs
        if hi < lo:
            raise SystemExit(f"held-out episodes of {n} frames are too short for history {h} and "
                             f"{horizon} chunks of {fs}; lower --horizon")
        for t0 in rng.integers(lo, hi + 1, size=8):
            idx = t0 + fs * np.arange(-(h - 1), horizon + 1)             # kept frames (h + horizon,)
            chunks = np.stack([ep["action"][t:t + fs].reshape(-1) for t in idx[:-1]])   # (h-1+Hz, chunk)
            hist.append(ep["pixels"][idx[:h]])
            future.append(ep["pixels"][idx[h:]])
            a_hist.append(chunks[:h - 1])
            acts.append(chunks[h - 1:])
    with torch.no_grad():
        dev = model.action_mean.device
        z_hist = model.encode(np.stack(hist)).float()                    # (N, h, D)
        z_true = model.encode(np.stack(future)).float()                  # (N, Hz, D)
        t = lambda x: torch.as_tensor(np.stack(x), dtype=torch.float32, device=dev)   # noqa: E731
        z_hat = model.rollout(z_hist, t(a_hist) if h > 1 else None, t(acts)).float()  # (N, Hz, D)
    err = (z_hat - z_true).square().sum(-1).median(0).values                           # (Hz,)
    hold = (z_hist[:, -1:] - z_true).square().sum(-1).median(0).values                 # (Hz,)
    return err.tolist(), hold.tolist()


if __name__ == "__main__":
    main()
