"""One file's episodes, as the dataset reader sees them: an HDF5 shard (or a foreign LeWM-style
.h5 file) or a staged .npz episode, and the scan of a dataset directory for both.

worldmodel.data.dataset assembles these into one in-memory Dataset.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable

import numpy as np

STAGING = ".staging"
EPISODE_KEYS = ("ep_len", "ep_offset", "ep_seed", "ep_index")
ROW_COLUMNS = ("pixels", "action", "state", "proprio")
SHARD_RE = re.compile(r"^shard_(\d+)\.h5$")
RECOLLECT = "move it away and re-collect its episodes (`wm collect ... resume=true` collects what is missing)"
STAGED_RE = re.compile(r"^ep_(\d+)\.npz$")


def staged_index(p: Path) -> int:
    """The global episode index in a staged file's name (`ep_<index>.npz`)."""
    return int(STAGED_RE.match(p.name).group(1))  # type: ignore[union-attr]


def scan(out_dir: Path) -> tuple[list["H5Source"], dict[int, Path]]:
    """Open every shard and list staged episodes. Staged files are listed first so that a pack
    running concurrently can only make an episode appear twice (deduplicated), never vanish."""
    staging = out_dir / STAGING
    staged = {}
    if staging.is_dir():
        for p in staging.iterdir():
            if STAGED_RE.match(p.name):
                staged[staged_index(p)] = p
    shards = [H5Source(p) for p in sorted(out_dir.glob("shard_*.h5")) if SHARD_RE.match(p.name)]
    return shards, staged


def close_all(sources: Iterable["Source"]) -> None:
    """Close the HDF5 files among `sources`."""
    for s in sources:
        if isinstance(s, H5Source):
            s.f.close()


class Source(ABC):
    """One file's episodes: per-episode arrays plus a way to copy row ranges of a column."""

    ep_len: np.ndarray
    ep_offset: np.ndarray
    ep_index: np.ndarray | None
    ep_seed: np.ndarray | None
    row_columns: dict[str, tuple[tuple[int, ...], np.dtype]]   # name -> (row shape, dtype)
    name: str

    @abstractmethod
    def read(self, col: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy rows [start, stop) of column `col` into `out`."""


class H5Source(Source):
    """A shard or foreign .h5 file: metadata read at open, rows copied straight into `out`."""

    def __init__(self, path: Path):
        import h5py

        self.name = str(path)
        try:
            self.f = h5py.File(path, "r")
        except OSError as e:
            if SHARD_RE.match(path.name):       # a shard `wm collect` wrote, truncated or overwritten
                raise ValueError(f"{path} is not a readable HDF5 file ({e}); {RECOLLECT}") from None
            raise ValueError(f"{path} is not a readable HDF5 file ({e}); pass data= a `wm collect` directory "
                             "or a LeWM-style .h5 episode file") from None
        f = self.f
        try:
            for key in ("ep_len", "ep_offset"):
                if key not in f:
                    raise ValueError(f"{path} has no {key!r} dataset; not a LeWM/wm-style episode file "
                                     f"(it has: {sorted(f.keys())})")
            n = max((v.shape[0] for k, v in f.items()
                     if isinstance(v, h5py.Dataset) and k not in EPISODE_KEYS and v.ndim), default=0)
            for key in EPISODE_KEYS:        # declared sizes checked before any table is read: >= 1 row an episode
                if key in f and (f[key].ndim != 1 or f[key].shape[0] > n):
                    raise ValueError(f"its {key!r} table declares {f[key].shape} entries for {n} rows")
            self.ep_len = f["ep_len"][()].astype(np.int64)
            self.ep_offset = f["ep_offset"][()].astype(np.int64)
            self.ep_index = f["ep_index"][()].astype(np.int64) if "ep_index" in f else None
            self.ep_seed = f["ep_seed"][()].astype(np.int64) if "ep_seed" in f else None
            self.attrs = json.loads(f.attrs["wm_meta"]) if "wm_meta" in f.attrs else None
            if self.attrs is not None and not isinstance(self.attrs, dict):
                raise ValueError("wm_meta is not a JSON object")
            self.row_columns = {k: (v.shape[1:], v.dtype) for k, v in f.items()
                                if isinstance(v, h5py.Dataset) and k not in EPISODE_KEYS and v.ndim >= 1}
        except (OSError, KeyError, ValueError, TypeError) as e:   # a checksum, a damaged table or attribute
            f.close()
            if str(e).startswith(str(path)):
                raise
            raise damaged(path, e) from None
        self._nchw = False
        if "pixels" in self.row_columns:
            shape, dt = self.row_columns["pixels"]
            if len(shape) == 3 and shape[0] in (1, 3) and shape[-1] not in (1, 3):   # (C, H, W) rows
                self._nchw = True
                self.row_columns["pixels"] = ((shape[1], shape[2], shape[0]), dt)
        check_episodes(self)

    def read(self, col: str, start: int, stop: int, out: np.ndarray) -> None:
        d = self.f[col]
        try:
            if col == "pixels" and self._nchw:
                out[...] = d[start:stop].transpose(0, 2, 3, 1)
            elif out.dtype == d.dtype and out.flags.c_contiguous:
                d.read_direct(out, source_sel=np.s_[start:stop])
            else:
                out[...] = d[start:stop]
        except OSError as e:                   # fletcher32 mismatch, unreadable chunk
            raise damaged(self.name, e, col) from None


class NpzSource(Source):
    """A staged episode (.npz): one episode, arrays loaded eagerly."""

    def __init__(self, path: Path):
        self.name = str(path)
        try:
            with np.load(path) as z:
                self.arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any decode failure (a CRC-32 mismatch, a cut) means a damaged file
            raise damaged_staged(path, e) from None
        rows = [k for k in self.arrays if k in ROW_COLUMNS]
        n = len(self.arrays[rows[0]])
        self.ep_len = np.array([n], np.int64)
        self.ep_offset = np.zeros(1, np.int64)
        self.ep_index = np.array([int(self.arrays["ep_index"])], np.int64)
        self.ep_seed = np.array([int(self.arrays["ep_seed"])], np.int64)
        self.row_columns = {k: (self.arrays[k].shape[1:], self.arrays[k].dtype) for k in rows}

    def read(self, col: str, start: int, stop: int, out: np.ndarray) -> None:
        out[...] = self.arrays[col][start:stop]


def damaged_staged(p: Path, e: BaseException) -> ValueError:
    """The one-line refusal of a damaged staged episode (truncated, bytes flipped)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ValueError(f"staged episode {p} is damaged ({type(e).__name__}: {first}); delete it and re-run "
                      "with resume=true (`wm collect` collects it again)")


def damaged(path: str | Path, e: BaseException, col: str | None = None) -> ValueError:
    """The one-line refusal of a damaged shard (a checksum mismatch, an unreadable table)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(f"{path} is damaged{f' in its {col!r} data' if col else ''} ({first}); {RECOLLECT}")


def check_episodes(s: Source) -> None:
    """Refuse a file whose episode table does not fit its row arrays."""
    n_rows = {k: None for k in s.row_columns}
    if isinstance(s, H5Source):
        n_rows = {k: s.f[k].shape[0] for k in s.row_columns}
    end = s.ep_offset + s.ep_len
    if (s.ep_len.shape != s.ep_offset.shape or (s.ep_len < 1).any() or (s.ep_offset < 0).any()
            or any(n is not None and len(end) and end.max() > n for n in n_rows.values())):
        raise ValueError(f"{s.name}: ep_len/ep_offset are inconsistent with the row arrays; corrupt file")
