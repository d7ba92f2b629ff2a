"""Training clips from a loaded dataset: index, split, batch-gather, sample.

A clip is `history + n_preds` frames taken `frameskip` rows apart inside one episode, the actions
between two kept frames concatenated into one chunk. Every valid clip start is precomputed once,
so a batch is two `np.take` gathers (no per-clip Python loop). ClipSampler is a seeded, resumable,
DDP-sharded stream of clip indices; ClipLoader gathers its batches ahead on a thread.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class ClipSpec:
    """Clip geometry: frames kept, prediction targets, and rows between kept frames."""

    history: int
    n_preds: int
    frameskip: int

    def __post_init__(self) -> None:
        for name in ("history", "n_preds", "frameskip"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_frames(self) -> int:
        return self.history + self.n_preds

    @property
    def span(self) -> int:
        """Rows from the first to the last kept frame."""
        return (self.num_frames - 1) * self.frameskip

    @property
    def min_episode_len(self) -> int:
        return self.span + 1


def _bad_action_rows(action: np.ndarray, ep_len: np.ndarray, ep_offset: np.ndarray) -> np.ndarray:
    """(N,) bool: rows whose action is non-finite although they are not an episode's last row."""
    bad = ~np.isfinite(action).all(axis=1)                                   # (N,)
    last = ep_offset + ep_len - 1
    bad[last[ep_len > 0]] = False                                            # NaN there by contract
    return bad


def action_problems(action: np.ndarray, ep_len: np.ndarray, ep_offset: np.ndarray,
                    meta: dict | None) -> dict[str, Any]:
    """What is wrong with a dataset's action rows: `nonfinite` rows (NaN/Inf other than the
    episodes' last rows, which are NaN by contract), `out_of_bounds` finite rows outside the
    meta's action_low/action_high (None where the data records no bounds) and `first_out_of_bounds`
    (episode, step) of the first such row."""
    action = np.asarray(action)
    bad = _bad_action_rows(action, ep_len, ep_offset)
    out: dict[str, Any] = {"nonfinite": int(bad.sum()), "out_of_bounds": None, "first_out_of_bounds": None}
    meta = meta or {}
    if "action_low" in meta and "action_high" in meta:
        low, high = np.asarray(meta["action_low"], np.float64), np.asarray(meta["action_high"], np.float64)
        tol = 1e-5 * np.maximum(high - low, 1.0)                             # float32 rounding of the bounds
        with np.errstate(invalid="ignore"):
            outside = ((action < low - tol) | (action > high + tol)).any(axis=1)  # (N,) False where NaN
        out["out_of_bounds"] = int(outside.sum())
        if outside.any():
            row = int(np.argmax(outside))
            ep = int(np.searchsorted(ep_offset, row, side="right") - 1)
            out["first_out_of_bounds"] = (ep, row - int(ep_offset[ep]))
    return out


def valid_starts(ep_len: np.ndarray, ep_offset: np.ndarray, spec: ClipSpec,
                 episodes: np.ndarray | None = None, bad_rows: np.ndarray | None = None) -> np.ndarray:
    """Flat (M,) int64 array of every row where a clip may start, episode by episode.

    A start s is valid when its last kept frame s + span stays inside the episode; its actions
    are then rows s .. s + span - 1, never the episode's final (NaN) row. Starts whose action
    window touches a `bad_rows` entry (NaN in the middle of an episode) are dropped.
    """
    eps = np.arange(len(ep_len)) if episodes is None else np.asarray(episodes, dtype=np.int64)
    counts = np.maximum(ep_len[eps] - spec.span, 0)                          # (E',)
    total = int(counts.sum())
    # Vectorised ragged arange: offset of each episode repeated, plus a within-episode ramp.
    base = np.repeat(ep_offset[eps], counts)                                 # (M,)
    ramp = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # (M,)
    starts = (base + ramp).astype(np.int64)
    if bad_rows is not None and bad_rows.any() and total:
        csum = np.concatenate([[0], np.cumsum(bad_rows, dtype=np.int64)])  # (N+1,)
        hits = csum[starts + spec.span] - csum[starts]                      # bad rows in window
        starts = starts[hits == 0]
    return starts


def split_episodes(ep_len: np.ndarray, spec: ClipSpec, val_fraction: float,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out split BY EPISODE among episodes long enough for one clip: (train, val) index arrays.

    The same seed always gives the same split, so a resumed run validates on the same episodes.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    usable = np.flatnonzero(ep_len >= spec.min_episode_len)
    if len(usable) == 0:
        raise ValueError(
            f"no episode is long enough for a clip: clips of history {spec.history} + n_preds "
            f"{spec.n_preds} frames, frameskip {spec.frameskip} need {spec.min_episode_len} rows, "
            f"but the longest episode has {int(ep_len.max(initial=0))}. Lower model.frameskip or "
            f"model.history, or collect longer episodes (episode_len=...).")
    perm = np.random.default_rng(seed).permutation(usable)
    n_val = int(round(val_fraction * len(usable)))
    if val_fraction > 0:
        n_val = max(1, n_val)
        if n_val >= len(usable):
            raise ValueError(
                f"only {len(usable)} usable episode(s): cannot hold out {val_fraction:.0%} for "
                "validation and still train. Collect more episodes or set data.val_fraction=0.")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def pose_features(state: np.ndarray, meta: dict[str, Any] | None) -> np.ndarray:
    """(N, S) states -> (N, F): what one frame can show, as the state probe reads it. The env's
    pose coordinates (meta.json `env_info.pose_dims`: velocities are left out, a single frame
    does not show them), each angle as (sin, cos) (a linear map cannot read a wrapping angle).
    Data without that record (older datasets, LeWM files) keep every coordinate as it is."""
    info = (meta or {}).get("env_info") or {}
    pose = info.get("pose_dims")
    if pose is None:
        return state
    if any(not 0 <= d < state.shape[1] for d in pose):
        raise ValueError(f"meta.json env_info.pose_dims {pose} index outside the {state.shape[1]} state "
                         "columns; fix or remove them")
    angles = set(info.get("angle_dims") or ())
    cols: list[np.ndarray] = []
    for d in pose:
        cols += [np.sin(state[:, d]), np.cos(state[:, d])] if d in angles else [state[:, d]]
    return np.stack(cols, axis=1)                                           # (N, F)


class ClipDataset:
    """Clips over a loaded dataset (anything with `pixels`, `action`, `ep_len`, `ep_offset`).

    `get_batch(idx)` gathers B clips at once: pixels (B, T, H, W, 3) uint8 and action chunks
    (B, T-1, frameskip*A) float32, both torch tensors sharing nothing with the dataset arrays.
    """

    def __init__(self, ds: Any, spec: ClipSpec, episodes: np.ndarray | None = None):
        self.spec = spec
        self.pixels = np.ascontiguousarray(ds.pixels)                       # (N, H, W, 3) uint8
        self.action = np.ascontiguousarray(ds.action, dtype=np.float32)     # (N, A)
        action = self.action
        try:                                                                # scoring only (probe)
            state = np.asarray(ds.state, dtype=np.float64)                  # (N, S)
        except (ValueError, AttributeError):                                # not loaded / not in the data
            state = None
        self.state = None if state is None else pose_features(state, getattr(ds, "meta", None))  # (N, F)
        self.ep_len = np.asarray(ds.ep_len, dtype=np.int64)
        self.ep_offset = np.asarray(ds.ep_offset, dtype=np.int64)
        self.episodes = (np.arange(len(self.ep_len)) if episodes is None
                         else np.asarray(episodes, dtype=np.int64))
        bad = _bad_action_rows(action, self.ep_len, self.ep_offset)
        self.starts = valid_starts(self.ep_len, self.ep_offset, spec, self.episodes, bad)  # (M,)
        t = spec.num_frames
        self._frame_off = np.arange(t, dtype=np.int64) * spec.frameskip     # (T,)
        self._action_off = np.arange((t - 1) * spec.frameskip, dtype=np.int64)  # ((T-1)*fs,)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def chunk_dim(self) -> int:
        return self.spec.frameskip * self.action_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def get_batch(self, idx: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather clips `idx` (B,) -> pixels (B, T, H, W, 3) uint8, actions (B, T-1, chunk) float32.

        np.take is single-threaded and releases the GIL: on a busy CPU it beats
        torch.index_select, whose OpenMP threads fight the training step.
        """
        s = self.starts[np.asarray(idx, dtype=np.int64)]                     # (B,)
        b, t = s.shape[0], self.spec.num_frames
        rows = self._frame_rows(s).reshape(-1)                               # (B*T,)
        pixels = np.take(self.pixels, rows, axis=0).reshape(b, t, *self.image_shape)  # (B, T, H, W, 3)
        arows = (s[:, None] + self._action_off).reshape(-1)                  # (B*(T-1)*fs,)
        actions = np.take(self.action, arows, axis=0).reshape(b, t - 1, self.chunk_dim)  # (B, T-1, chunk)
        return torch.from_numpy(pixels), torch.from_numpy(actions)

    def frame_states(self, idx: np.ndarray | torch.Tensor) -> np.ndarray | None:
        """The `pose_features` (B, T, F) of the frames of clips `idx` (None without a state
        column). Used only to score the latents (the state probe), never as a model input."""
        if self.state is None:
            return None
        return self.state[self._frame_rows(self.starts[np.asarray(idx, dtype=np.int64)])]  # (B, T, S)

    def _frame_rows(self, starts: np.ndarray) -> np.ndarray:
        """Dataset rows (B, T) of the frames of clips starting at rows `starts` (B,)."""
        return starts[:, None] + self._frame_off

    def action_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-chunk-dim mean and std (chunk,) over this split's action rows (NaN rows excluded).

        A chunk is `frameskip` consecutive actions, so its statistics are the per-action ones
        tiled `frameskip` times. A constant dimension gets std 1 (normalising it would divide by 0).
        """
        counts = np.maximum(self.ep_len[self.episodes] - 1, 0)
        base = np.repeat(self.ep_offset[self.episodes], counts)
        rows = base + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        a = self.action[rows].astype(np.float64)                              # (R, A)
        a = a[np.isfinite(a).all(axis=1)]
        if len(a) == 0:
            raise ValueError("no finite actions in the training episodes: the dataset is empty or corrupt")
        mean, std = a.mean(axis=0), a.std(axis=0)
        std = np.where(std < 1e-6, 1.0, std)
        tile = lambda v: torch.from_numpy(np.tile(v, self.spec.frameskip).astype(np.float32))  # noqa: E731
        return tile(mean), tile(std)


class ClipSampler:
    """Infinite, seeded, resumable stream of clip-index batches, sharded across DDP ranks.

    Epoch e is `randperm(n)` from a generator seeded by (seed, e); rank r reads the r-th of
    `world_size` contiguous, equally long slices of it (a tail of < world_size clips is skipped
    that epoch), so ranks never share a clip within an epoch and all take the same number of
    steps. Batches run across epoch boundaries; the cursor (epoch, pos) is the whole state.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if n < world_size:
            raise ValueError(f"only {n} clips for {world_size} ranks: use a bigger dataset")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shard = n // world_size
        self.epoch, self.pos = 0, 0
        self._cached: tuple[int, torch.Tensor] | None = None

    def _epoch_slice(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g)                       # (n,)
            self._cached = (epoch, perm[self.rank * self.shard:(self.rank + 1) * self.shard])
        return self._cached[1]

    def next_indices(self) -> torch.Tensor:
        """The next (batch_size,) int64 clip indices for this rank; advances the cursor."""
        parts, need = [], self.batch_size
        while need:
            chunk = self._epoch_slice(self.epoch)[self.pos:self.pos + need]
            parts.append(chunk)
            need -= len(chunk)
            self.pos += len(chunk)
            if self.pos == self.shard:
                self.epoch, self.pos = self.epoch + 1, 0
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield self.next_indices()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "n", "world_size"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume the data order: checkpoint has {key}={state[key]}, this run "
                    f"has {getattr(self, key)}. Resume with the same dataset, seed and world size.")
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.shard


class ClipLoader:
    """Batches from `clips` in `sampler` order, optionally gathered ahead by a background thread.

    `state_dict()` is the sampler cursor after the last batch *handed out* (not the prefetched
    ones), so checkpointing mid-stream resumes exactly. The gather (np.take) releases
    the GIL, so the thread overlaps with the training step.
    """

    def __init__(self, clips: ClipDataset, sampler: ClipSampler, prefetch: int = 2,
                 pin_memory: bool = False):
        self.clips, self.sampler = clips, sampler
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self._state = sampler.state_dict()
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _produce(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        pixels, actions = self.clips.get_batch(self.sampler.next_indices())
        if self.pin_memory:
            pixels, actions = pixels.pin_memory(), actions.pin_memory()
        return pixels, actions, self.sampler.state_dict()

    def _worker(self) -> None:
        assert self._queue is not None
        try:
            while not self._stop.is_set():
                item = self._produce()
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surface loader errors in the training thread
            self._queue.put(e)

    def __iter__(self) -> "ClipLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prefetch <= 0:
            pixels, actions, self._state = self._produce()
            return pixels, actions
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._thread = threading.Thread(target=self._worker, name="clip-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()  # type: ignore[union-attr]
        if isinstance(item, BaseException):
            raise item
        pixels, actions, self._state = item
        return pixels, actions

    def state_dict(self) -> dict[str, int]:
        return dict(self._state)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
