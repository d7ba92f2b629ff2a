"""The dataset format: crash-safe episode writing and a fast in-memory reader.

A dataset is a directory with `meta.json` and HDF5 shards `shard_<first episode index>.h5`, each
holding per-column arrays over all its rows (`pixels` (N,H,W,3) uint8, `action` (N,A) float32,
`state` (N,S) float64, `proprio` (N,P) float32) and per-episode arrays (`ep_len`, `ep_offset`,
`ep_seed`, `ep_index`) -- the LeWM / stable-worldmodel layout, so one of their `.h5` files loads too.

A `kill -9` at any moment loses at most the episode in flight: each finished episode is staged
atomically (`stage_episode`), shards are written once under a temporary name and renamed
(`pack_shard`), and the reader and `recover()` deduplicate by the global `ep_index`. Every array
carries a checksum verified when read (HDF5's fletcher32 filter in shards, the zip CRC-32 in staged
episodes), so damaged data is refused by name, never trained on.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from worldmodel.io import writing
from worldmodel.machine import check_memory
from worldmodel.data.sources import (EPISODE_KEYS, ROW_COLUMNS, STAGING, H5Source, NpzSource,  # noqa: F401
                                     Source, close_all, damaged_staged, scan, staged_index)

FORMAT = "wm-hdf5-v1"
META = "meta.json"
RESUME_FIX = "free space, then re-run with resume=true (finished episodes are kept)"


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def stage_episode(out_dir: str | os.PathLike, episode: dict[str, Any]) -> Path:
    """Atomically stage one finished episode as `.staging/ep_<index>.npz`.

    `episode` holds row arrays (`pixels`, `action`, ...; equal first dims) and ints `ep_index`,
    `ep_seed`. Survives the death of the process (not of the machine: no fsync, for speed).
    """
    staging = Path(out_dir) / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    index = int(episode["ep_index"])
    final = staging / f"ep_{index:08d}.npz"
    tmp = staging / f"ep_{index:08d}.npz.{os.getpid()}.tmp"     # per-process: writers never share a file
    with writing(final, tmp, RESUME_FIX):
        try:
            f = open(tmp, "wb")
        except FileNotFoundError:                 # staging dir removed by a finishing collector
            staging.mkdir(parents=True, exist_ok=True)
            f = open(tmp, "wb")
        with f:
            np.savez(f, **{k: np.asarray(v) for k, v in episode.items()})   # zip: a CRC-32 per array
        os.replace(tmp, final)
    return final


def _staged(p: Path) -> Any:
    """Open a staged episode for reading; each array read is checked against its CRC-32."""
    try:
        return np.load(p)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - any decode failure means a damaged file
        raise damaged_staged(p, e) from None


def pack_shard(out_dir: str | os.PathLike, staged: Sequence[Path], attrs: dict[str, Any]) -> Path | None:
    """Pack staged episodes into a new shard `shard_<min index>.h5` (temp + fsync + rename).

    Streams one episode at a time (memory stays one episode). The staged files are deleted only
    after the shard is in place; a crash in between leaves duplicates that the reader and
    `recover` drop by `ep_index`. Returns the shard path (None when nothing was staged).
    """
    import h5py

    if not staged:
        return None
    staged = sorted(staged, key=staged_index)
    index, seed, lens, members = [], [], [], []
    for p in staged:                                     # pass 1: sizes only (npz loads lazily)
        with _staged(p) as z:
            try:
                rows = [k for k in z.files if k in ROW_COLUMNS]
                index.append(int(z["ep_index"]))
                seed.append(int(z["ep_seed"]))
                lens.append(len(z["action"] if "action" in rows else z[rows[0]]))
            except Exception as e:  # noqa: BLE001 - a CRC or decode failure: damaged
                raise damaged_staged(p, e) from None
            members.append(set(rows))
    cols = sorted(set.intersection(*members))
    lens_a = np.array(lens, np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens_a)[:-1]]).astype(np.int64)
    final = Path(out_dir) / f"shard_{index[0]:05d}.h5"
    if final.exists():
        raise FileExistsError(f"{final} already exists; run collection with resume=true to recover")
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    with writing(final, tmp, RESUME_FIX):
        with h5py.File(tmp, "w") as f:                   # fletcher32: every chunk checksummed, checked on read
            with _staged(staged[0]) as z:
                dsets = {c: f.create_dataset(c, (int(lens_a.sum()), *z[c].shape[1:]), dtype=z[c].dtype,
                                             fletcher32=True) for c in cols}
            for p, off, n in zip(staged, offsets, lens_a):  # pass 2: copy rows
                with _staged(p) as z:
                    for c in cols:
                        try:
                            rows = z[c]
                        except Exception as e:  # noqa: BLE001 - a CRC or decode failure: damaged
                            raise damaged_staged(p, e) from None
                        dsets[c][off:off + n] = rows
            for k, v in (("ep_len", lens_a), ("ep_offset", offsets), ("ep_seed", np.array(seed, np.int64)),
                         ("ep_index", np.array(index, np.int64))):
                f.create_dataset(k, data=v, fletcher32=True)
            f.attrs["wm_meta"] = json.dumps(attrs)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    for p in staged:
        p.unlink(missing_ok=True)
    return final


def committed_indices(out_dir: str | os.PathLike) -> set[int]:
    """Global indices of every finished episode (in shards or staged)."""
    shards, staged = scan(Path(out_dir))
    close_all(shards)
    return {i for s in shards if s.ep_index is not None for i in s.ep_index.tolist()} | set(staged)


def recover(out_dir: str | os.PathLike, index_range: range, attrs: dict[str, Any]) -> int:
    """Clean up after a crash within `index_range`: drop temporaries and staged duplicates, pack
    leftover staged episodes into a shard. Returns the number of episodes packed.

    Only call it while no writer can be alive (`wm collect` waits on its writers lock first)."""
    out_dir = Path(out_dir)
    for d in (out_dir, out_dir / STAGING):
        for tmp in d.glob("*.tmp") if d.is_dir() else []:
            m = re.match(r"^(?:shard|ep)_(\d+)\.", tmp.name)
            if m and int(m.group(1)) in index_range:
                tmp.unlink(missing_ok=True)
    shards, staged = scan(out_dir)
    close_all(shards)
    in_shards = {i for s in shards if s.ep_index is not None for i in s.ep_index.tolist()}
    leftovers = []
    for idx, p in staged.items():
        if idx not in index_range:
            continue
        if idx in in_shards:
            p.unlink(missing_ok=True)       # packed, then the process died before deleting it
        else:
            leftovers.append(p)
    pack_shard(out_dir, leftovers, attrs)
    return len(leftovers)


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
@dataclass
class Dataset:
    """Whole columns in memory, episodes concatenated in `ep_index` order.

    `columns[name]` is (N, ...) contiguous; episode e spans rows
    `ep_offset[e] : ep_offset[e] + ep_len[e]`.
    """

    meta: dict[str, Any]
    columns: dict[str, np.ndarray]
    ep_len: np.ndarray                      # (E,) int64
    ep_offset: np.ndarray                   # (E,) int64
    ep_index: np.ndarray                    # (E,) int64 global episode index (position if unknown)
    ep_seed: np.ndarray | None = None       # (E,) int64, None for foreign files
    path: Path = field(default_factory=Path)
    available: tuple[str, ...] = ()         # row columns present in the files

    @property
    def num_episodes(self) -> int:
        return int(self.ep_len.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.ep_len.sum())

    def column(self, name: str) -> np.ndarray:
        if name not in self.columns:
            where = "was not requested" if name in self.available else "is not in this dataset"
            raise ValueError(
                f"column {name!r} {where} ({self.path}); loaded: {sorted(self.columns)}, "
                f"available: {list(self.available)}. Pass columns=(..., {name!r}) to load_dataset.")
        return self.columns[name]

    @property
    def pixels(self) -> np.ndarray:
        return self.column("pixels")

    @property
    def action(self) -> np.ndarray:
        return self.column("action")

    @property
    def state(self) -> np.ndarray:
        return self.column("state")

    @property
    def proprio(self) -> np.ndarray:
        return self.column("proprio")

    def episode(self, e: int) -> dict[str, np.ndarray]:
        """Views of every loaded column for episode position `e`."""
        a, n = int(self.ep_offset[e]), int(self.ep_len[e])
        return {k: v[a:a + n] for k, v in self.columns.items()}


def load_dataset(
    path: str | os.PathLike,
    columns: Iterable[str] = ("pixels", "action", "state"),
    episodes: int | Sequence[int] | None = None,
) -> Dataset:
    """Load a dataset directory or a single LeWM-style `.h5` file into memory.

    `episodes`: None (all), an int n (the first n), or positions into the `ep_index` order.
    Requested columns that the data lacks are left out (accessing them raises ValueError).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"dataset path {path} does not exist; collect one with `wm collect out={path}`")
    if path.is_dir():
        meta_path = path / META
        meta = read_meta(meta_path) if meta_path.exists() else {}
        sources = _dir_sources(path)
        if not sources:
            what = "no episodes yet" if meta else "no meta.json and no shard_*.h5 files"
            raise ValueError(f"{path} holds {what}; is it a dataset directory made by `wm collect`?")
    else:
        sources = [H5Source(path)]
        meta = sources[0].attrs or {"format": "external-hdf5", "source": str(path)}
    try:
        return _assemble(path, meta, sources, tuple(columns), episodes)
    finally:
        close_all(sources)


def _dir_sources(path: Path, attempts: int = 5) -> list["Source"]:
    """Shards plus staged episodes not yet packed; retried if a concurrent pack deletes a staged file."""
    for attempt in range(attempts):
        shards, staged = scan(path)
        in_shards = {i for s in shards if s.ep_index is not None for i in s.ep_index.tolist()}
        try:
            return [*shards, *(NpzSource(p) for i, p in sorted(staged.items()) if i not in in_shards)]
        except FileNotFoundError:
            close_all(shards)
            if attempt == attempts - 1:
                raise ValueError(f"{path} keeps changing under the reader; retry when collection finishes") from None
    return []


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a dataset's meta.json, refusing foreign or damaged files."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is unreadable ({e}); re-create it with `wm collect ... resume=true`") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not {FORMAT!r}; not a wm dataset")
    return meta


def _assemble(path: Path, meta: dict, sources: list[Source], want: tuple[str, ...],
              episodes: int | Sequence[int] | None) -> Dataset:
    """Order episodes by ep_index, select, and copy each column into one contiguous array."""
    for s in sources:
        if isinstance(s, H5Source) and s.attrs and meta and s.attrs.get("key") != meta.get("key"):
            raise ValueError(f"{s.name} was collected with a different config than {path / META} "
                             f"({s.attrs.get('key')} vs {meta.get('key')}); keep one collection per directory")
    # (source id, local episode) for every episode, in global order
    refs = [(si, e) for si, s in enumerate(sources) for e in range(len(s.ep_len))]
    if all(s.ep_index is not None for s in sources):
        keys = np.array([sources[si].ep_index[e] for si, e in refs], np.int64)  # type: ignore[index]
        if len(np.unique(keys)) != len(keys):
            raise ValueError(f"{path}: duplicate episode indices across shards; run `wm collect ... resume=true`")
        refs = [refs[i] for i in np.argsort(keys, kind="stable")]
    if episodes is not None:
        pick = range(min(int(episodes), len(refs))) if isinstance(episodes, (int, np.integer)) else episodes
        try:
            refs = [refs[int(i)] for i in pick]
        except IndexError:
            raise ValueError(f"episode selection out of range: dataset has {len(refs)} episodes") from None
    available = sorted(set.intersection(*(set(s.row_columns) for s in sources)))
    partial = sorted(set.union(*(set(s.row_columns) for s in sources)) - set(available))
    cols = [c for c in want if c in available]
    bad = [c for c in want if c in partial]
    if bad:
        raise ValueError(f"{path}: column(s) {bad} exist in only some files; the shards are not one dataset")
    lens = np.array([sources[si].ep_len[e] for si, e in refs], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    total = int(lens.sum())
    out: dict[str, np.ndarray] = {}
    layout = {}
    for c in cols:
        shape = sources[0].row_columns[c][0]
        if any(s.row_columns[c][0] != shape for s in sources):
            raise ValueError(f"{path}: column {c!r} has different shapes across files")
        layout[c] = shape, np.result_type(*(s.row_columns[c][1] for s in sources))
    need = sum(total * int(np.prod(shape)) * dtype.itemsize for shape, dtype in layout.values())
    check_memory(need, f"loading {path} ({len(refs)} episodes, {total} frames of {', '.join(cols)})",
                 "load fewer episodes (wm train: data.episodes=N) or use a machine with more memory")
    for c, (shape, dtype) in layout.items():
        arr = np.empty((total, *shape), dtype)
        for si, e0, dst, n in _runs(sources, refs, offsets, lens):
            src = int(sources[si].ep_offset[e0])
            sources[si].read(c, src, src + n, arr[dst:dst + n])
        out[c] = arr
    idx = np.array([sources[si].ep_index[e] if sources[si].ep_index is not None else k
                    for k, (si, e) in enumerate(refs)], np.int64)
    seeds = (np.array([sources[si].ep_seed[e] for si, e in refs], np.int64)
             if all(s.ep_seed is not None for s in sources) else None)
    return Dataset(meta, out, lens, offsets, idx, seeds, path, tuple(available))


def _runs(sources: list[Source], refs: list[tuple[int, int]], offsets: np.ndarray, lens: np.ndarray):
    """Merge consecutive episodes that are contiguous in one source into single copies."""
    run = None
    for k, (si, e) in enumerate(refs):
        s = sources[si]
        if (run is not None and run[0] == si and int(s.ep_offset[e]) == int(s.ep_offset[run[1]]) + run[3]):
            run[3] += int(lens[k])
            continue
        if run is not None:
            yield tuple(run)
        run = [si, e, int(offsets[k]), int(lens[k])]
    if run is not None:
        yield tuple(run)
