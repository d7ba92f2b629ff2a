"""`wm inspect PATH`: what is in a dataset, before spending GPU hours training on it.

    wm inspect data/tworoom            # readable report
    wm inspect data/tworoom json=true  # the same as one JSON object

Reports episodes, frames, episode lengths, per-dimension action / state / proprio statistics,
action rows that are NaN/Inf inside an episode or outside the recorded bounds (`wm train` refuses the latter),
disk size, and the env's own episode metrics (e.g. TwoRoom `crossed_door`, Push-T
`block_moved`), computed by rebuilding the env named in meta.json and scoring every episode's
states: a dataset where the agent never crosses the door cannot teach a model to plan through it.
"""
from __future__ import annotations

import json as jsonlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.config import ConfigError
from worldmodel.data.dataset import load_dataset


@dataclass
class InspectConfig:
    path: str | None = None       # dataset directory or a single .h5 file
    json: bool = False            # print JSON instead of the readable report
    metrics: bool = True          # score episodes with the env's episode_metrics (needs the env)

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("no dataset given: wm inspect PATH (a directory from `wm collect`, or an .h5 file)")


CONFIG = InspectConfig
CONFIG_NAME = "inspect"


def column_stats(x: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension min/mean/std/max of (N, D) rows, ignoring NaN (episodes' last actions)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)            # (N, D)
    finite = np.isfinite(x).all(axis=1)
    x = x[finite]
    if not len(x):
        return {"min": [], "mean": [], "std": [], "max": []}
    return {"min": x.min(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "max": x.max(0).tolist()}


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def episode_metrics(meta: dict[str, Any], ds: Any) -> dict[str, dict[str, float]]:
    """Aggregate `env.episode_metrics(states)` over episodes: mean, and whether it is a 0/1 flag."""
    from worldmodel import envs

    env = envs.make(meta["env"], image_size=int(meta.get("image_size", 64)), **meta.get("env_kwargs", {}))
    try:
        if not hasattr(env, "episode_metrics"):
            return {}
        per_ep: dict[str, list[float]] = {}
        for e in range(ds.num_episodes):
            for k, v in env.episode_metrics(ds.episode(e)["state"]).items():
                per_ep.setdefault(k, []).append(float(v))
    finally:
        env.close()
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)),
                "binary": bool(np.isin(v, (0.0, 1.0)).all())} for k, v in per_ep.items()}


def inspect(path: str | Path, metrics: bool = True) -> dict[str, Any]:
    """Summary dict of the dataset at `path` (no pixels are loaded)."""
    path = Path(path)
    from worldmodel.data.clips import action_problems

    ds = load_dataset(path, columns=("action", "state", "proprio"))
    meta = ds.meta
    lens = ds.ep_len
    out: dict[str, Any] = {
        "path": str(path), "format": meta.get("format"),
        "env": meta.get("env") or (f"none (recorded: {meta['source']})" if meta.get("source") else None),
        "policy": meta.get("policy"), "policy_kwargs": meta.get("policy_kwargs") or {},
        "image_size": meta.get("image_size"),
        "episodes": ds.num_episodes, "episodes_requested": meta.get("episodes"), "frames": ds.num_frames,
        "episode_len": {"min": int(lens.min()), "mean": float(lens.mean()), "max": int(lens.max())},
        "disk_bytes": disk_bytes(path), "columns": list(ds.available),
    }
    names = {"action": [f"a{i}" for i in range(meta.get("action_dim", 0))],
             "state": meta.get("state_names"), "proprio": meta.get("proprio_names")}
    for col in ("action", "state", "proprio"):
        if col in ds.columns:
            st = column_stats(ds.columns[col])
            dims = len(st["min"])
            st["names"] = list(names[col]) if names[col] and len(names[col]) == dims else [str(i) for i in range(dims)]
            out[col] = st
    if "action" in ds.columns:
        out["action_problems"] = action_problems(ds.columns["action"], ds.ep_len, ds.ep_offset, meta)
    out["metrics"] = {}
    if metrics and meta.get("env") and "state" in ds.columns:
        out["metrics"] = episode_metrics(meta, ds)
    return out


def format_report(r: dict[str, Any]) -> str:
    """Readable multi-line report of `inspect`'s dict."""
    mb = r["disk_bytes"] / 2 ** 20
    req = f" of {r['episodes_requested']} requested" if r.get("episodes_requested") else ""
    px = f"{r['image_size']} px" if r.get("image_size") else "image size not recorded"
    lines = [
        f"dataset  {r['path']}  ({r['format']}; env {r['env']}, policy {r['policy'] or 'not recorded'}"
        f"{''.join(f' {k}={v}' for k, v in r['policy_kwargs'].items())}, {px})",
        f"episodes {r['episodes']}{req}   frames {r['frames']}   disk {mb:.1f} MiB "
        f"({r['disk_bytes'] / max(r['frames'], 1) / 1024:.1f} KiB/frame)",
        f"episode length  min {r['episode_len']['min']}  mean {r['episode_len']['mean']:.1f}  "
        f"max {r['episode_len']['max']}",
    ]
    cols = [c for c in ("action", "state", "proprio") if c in r]
    w = max([len(c) for c in cols] + [len(n) + 2 for c in cols for n in r[c]["names"]]) + 1
    for col in cols:
        st = r[col]
        lines.append(f"{col:<{w}}" + "".join(f"{s:>10}" for s in ("min", "mean", "std", "max")))
        for i, name in enumerate(st["names"]):
            lines.append(f"  {name:<{w - 2}}" + "".join(f"{st[s][i]:>10.3f}" for s in ("min", "mean", "std", "max")))
    ap = r.get("action_problems") or {}
    if ap.get("nonfinite"):
        lines.append(f"WARNING: {ap['nonfinite']} action rows inside episodes are NaN/Inf (training skips the clips "
                     "touching them; the statistics above leave them out)")
    if ap.get("out_of_bounds"):
        ep, t = ap["first_out_of_bounds"]
        lines.append(f"WARNING: {ap['out_of_bounds']} action rows lie outside the recorded bounds (first: episode {ep}, "
                     f"step {t}); `wm train` refuses this data: repair or drop those episodes, or re-collect")
    if r["metrics"]:
        lines.append("episode metrics")
        for k, m in r["metrics"].items():
            txt = f"{100 * m['mean']:.0f}% of episodes" if m["binary"] else f"mean {m['mean']:.3f} (std {m['std']:.3f})"
            lines.append(f"  {k}: {txt}")
    return "\n".join(lines)


def run(cfg: InspectConfig) -> dict[str, Any]:
    report = inspect(cfg.path, metrics=cfg.metrics)  # type: ignore[arg-type]
    print(jsonlib.dumps(report) if cfg.json else format_report(report), file=sys.stdout)
    return report
