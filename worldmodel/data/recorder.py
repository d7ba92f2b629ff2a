"""Record episodes from outside the toolkit (a real robot, another simulator, old logs) as a dataset.

`DatasetWriter` turns camera frames and the commands sent into the same crash-safe dataset
`wm collect` writes (worldmodel.data.dataset), so training and inspection work on it unchanged:

    with DatasetWriter("data/arm", action_low=[-1, -1], action_high=[1, 1], control_hz=10, image_size=64) as w:
        w.add_episode(pixels=frames, action=commands)     # (T, 64, 64, 3) uint8, (T - 1, A)
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from worldmodel.data import dataset as D
from worldmodel.io import check_output, mark_output, write_json_atomic

WRITES = (D.META, "shard_*.h5", D.STAGING)     # what a DatasetWriter writes (besides io.MARKER)


class DatasetWriter:
    """Append recorded episodes to a wm dataset directory.

    Every `add_episode` is staged atomically; `close()` (or every `shard_every` episodes) packs the
    staged episodes into a shard, and `resume=True` packs what a killed run staged and appends after
    it. Frames of another size: `worldmodel.report.video.fit_frame(frame, image_size)`. `pose_dims` /
    `angle_dims` say which state coordinates a frame shows and which are angles (the state probe's
    input; default: every coordinate as it is). Refused, with the fix named: malformed frames or
    actions, NaN/Inf, actions outside the bounds, an existing dataset without `resume=True`, a resume
    with other settings."""

    def __init__(self, out: str | Path, *, action_low: Sequence[float], action_high: Sequence[float],
                 control_hz: float, image_size: int, name: str = "recorded",
                 state_names: Sequence[str] | None = None, proprio_names: Sequence[str] | None = None,
                 pose_dims: Sequence[int] | None = None, angle_dims: Sequence[int] = (),
                 shard_every: int = 100, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.low = np.asarray(action_low, np.float32).reshape(-1)
        self.high = np.asarray(action_high, np.float32).reshape(-1)
        if self.low.shape != self.high.shape or not np.all(self.low < self.high):
            raise ValueError(f"action_low {self.low.tolist()} and action_high {self.high.tolist()} must have "
                             "the same length and low < high in every dimension")
        if not (isinstance(image_size, int) and image_size >= 8):
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if not control_hz > 0:
            raise ValueError(f"control_hz must be > 0, got {control_hz!r}")
        if shard_every < 1:
            raise ValueError(f"shard_every must be >= 1, got {shard_every}")
        self.image_size, self.shard_every = image_size, shard_every
        fixed = {"action_low": self.low.tolist(), "action_high": self.high.tolist(),
                 "control_hz": float(control_hz), "image_size": image_size}
        key = hashlib.sha1(json.dumps({"recorded": name, **fixed}, sort_keys=True).encode()).hexdigest()[:12]
        self.meta = {"format": D.FORMAT, "env": None, "source": name, "policy": "recorded",
                     "action_dim": int(self.low.size), "frameskip": 1, "episodes": 0, **fixed,
                     "state_names": list(state_names) if state_names else None,
                     "proprio_names": list(proprio_names) if proprio_names else None, "key": key}
        if pose_dims is not None:       # what the training's state probe reads (worldmodel.data.clips.pose_features)
            if not set(angle_dims) <= set(pose_dims):
                raise ValueError(f"angle_dims {list(angle_dims)} must be among pose_dims {list(pose_dims)}")
            self.meta["env_info"] = {"pose_dims": [int(d) for d in pose_dims],
                                     "angle_dims": [int(d) for d in angle_dims]}
        self._attrs = {"format": D.FORMAT, "key": key}
        self._open(resume, overwrite)
        self._staged: list[Path] = []
        self._dims: dict[str, int] = {}         # state / proprio width, fixed by the first episode
        self._closed = False

    def _open(self, resume: bool, overwrite: bool) -> None:
        """Refuse to mix with or clobber other data; on resume, pack what a killed run staged."""
        meta_path = self.out / D.META
        if overwrite:                   # only a folder an earlier DatasetWriter marked, holding nothing else
            if check_output(self.out, True, WRITES, "DatasetWriter"):
                shutil.rmtree(self.out)
        elif self.out.exists() and any(self.out.iterdir()):
            if not meta_path.exists():
                raise FileExistsError(f"{self.out} exists and is not a wm dataset; choose another path")
            if not resume:
                raise FileExistsError(f"{self.out} already exists; pass resume=True to append to it, "
                                      "overwrite=True to replace it, or another path")
            else:
                old = D.read_meta(meta_path)
                if old.get("key") != self.meta["key"]:
                    diff = [k for k in ("source", "action_low", "action_high", "control_hz", "image_size")
                            if old.get(k) != self.meta[k]]
                    raise ValueError(f"{self.out} was recorded with other settings ({', '.join(diff)} differ); "
                                     "resume with the same ones or write to another path")
                D.recover(self.out, range(2**62), self._attrs)
                self.meta = {**old, "episodes": 0}
                if D.committed_indices(self.out):
                    have = D.load_dataset(self.out, columns=())      # reads no rows
                    self.meta.update(episodes=have.num_episodes, columns=sorted(have.available))
        self.out.mkdir(parents=True, exist_ok=True)
        self._next = max(D.committed_indices(self.out), default=-1) + 1
        write_json_atomic(self.out / D.META, self.meta)
        mark_output(self.out, "DatasetWriter")          # after meta.json: a kill between leaves it resumable

    def add_episode(self, pixels: np.ndarray, action: np.ndarray, state: np.ndarray | None = None,
                    proprio: np.ndarray | None = None) -> int:
        """Stage one episode: T frames, the T - 1 actions between them (a T-th action, sent after
        the last frame, has no observed outcome and is dropped), optional (T, S) state and (T, P)
        proprioception. Returns the episode's index in the dataset."""
        if self._closed:
            raise RuntimeError("DatasetWriter is closed; open a new one with resume=True to add more")
        pixels = np.asarray(pixels)
        n = self.image_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (n, n, 3) or len(pixels) < 2:
            raise ValueError(f"pixels must be (T >= 2, {n}, {n}, 3) uint8 (fit camera frames with worldmodel.report.video.fit_frame(frame, {n})), "
                             f"got {pixels.shape} {pixels.dtype}")
        T = len(pixels)
        action = np.asarray(action, np.float32)
        if action.ndim != 2 or action.shape[1] != self.low.size or len(action) not in (T - 1, T):
            raise ValueError(f"action must be (T - 1 = {T - 1}, {self.low.size}) for {T} frames, got {action.shape}")
        action = action[:T - 1]
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN/Inf; drop or repair those steps before recording")
        if np.any(action < self.low) or np.any(action > self.high):
            raise ValueError(f"actions outside the bounds [{self.low.tolist()}, {self.high.tolist()}] "
                             f"(range seen {action.min(0).tolist()} .. {action.max(0).tolist()}); "
                             "record the commands the system accepted, or widen action_low/action_high")
        episode: dict[str, Any] = {"pixels": pixels,
                                   "action": np.concatenate([action, np.full((1, self.low.size), np.nan, np.float32)]),
                                   "ep_index": self._next, "ep_seed": -1}
        for col, x, dtype in (("state", state, np.float64), ("proprio", proprio, np.float32)):
            if x is None:
                continue
            x = np.asarray(x, dtype)
            if x.ndim != 2 or len(x) != T or not np.all(np.isfinite(x)):
                raise ValueError(f"{col} must be finite (T = {T}, D), got {x.shape}")
            if self._dims.setdefault(col, x.shape[1]) != x.shape[1]:
                raise ValueError(f"{col} has {x.shape[1]} dims here, {self._dims[col]} in earlier episodes")
            episode[col] = x
        cols = sorted(k for k in episode if k in D.ROW_COLUMNS)
        if self.meta.setdefault("columns", cols) != cols:
            raise ValueError(f"this episode has columns {cols}, the dataset {self.meta['columns']}: give every "
                             "episode the same optional state/proprio")
        self._staged.append(D.stage_episode(self.out, episode))
        self._next += 1
        self.meta["episodes"] += 1
        if len(self._staged) >= self.shard_every:
            self.flush()
        return self._next - 1

    def flush(self) -> None:
        """Pack the staged episodes into a shard and update meta.json's episode count."""
        D.pack_shard(self.out, self._staged, self._attrs)
        self._staged = []
        write_json_atomic(self.out / D.META, self.meta)

    def close(self) -> None:
        if not self._closed:
            self.flush()
            try:
                (self.out / D.STAGING).rmdir()
            except OSError:
                pass
            self._closed = True

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
