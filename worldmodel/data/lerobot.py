"""LeRobot datasets (codebase v3.0, and v2.0/v2.1) read as they are laid out on disk, and imported
into a wm dataset (`wm import lerobot PATH out=DATA`); the export is worldmodel.data.lerobot_export.

v3.0: `meta/info.json` (fps, features, path templates), `meta/episodes/chunk-*/file-*.parquet`
(one row per episode: length, tasks, its data file and rows, its video file and start time),
`data/chunk-*/file-*.parquet` (one row per frame: `action`, `observation.state`, `episode_index`,
...), `videos/<camera>/chunk-*/file-*.mp4` (episodes one after another). v2.x: `meta/episodes.jsonl`
and one parquet and one MP4 per episode. Read with pyarrow and PyAV, not the `lerobot` package.

`open_lerobot` checks everything before any work (version, features, episode table against the data
rows, every video decodable and long enough, every action finite) and refuses with the fix named;
`iter_episodes` then streams one episode at a time, so RAM holds one episode's frames.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

VERSIONS = ("v2.0", "v2.1", "v3.0")
IMAGE_DTYPES = ("video", "image")


@dataclass
class Episode:
    index: int
    length: int
    task: str
    data: Path                      # its data parquet
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # camera -> (its MP4, start in s)
    video: Path | None = None       # the chosen camera's MP4 ...
    start_s: float = 0.0            # ... and where the episode starts in it


@dataclass
class LeRobotSource:
    root: Path
    info: dict[str, Any]
    camera: str
    episodes: list[Episode]
    action_min: np.ndarray = field(default_factory=lambda: np.zeros(0))
    action_max: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def version(self) -> str:
        return str(self.info["codebase_version"])

    @property
    def fps(self) -> float:
        return float(self.info["fps"])

    @property
    def features(self) -> dict[str, Any]:
        return self.info["features"]

    @property
    def has_state(self) -> bool:
        return "observation.state" in self.features

    @property
    def frames(self) -> int:
        return sum(e.length for e in self.episodes)


def pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading and writing LeRobot datasets needs pyarrow: pip install pyarrow") from None
    return pq


def open_lerobot(path: str | Path, camera: str | None = None) -> LeRobotSource:
    """Read a LeRobot dataset's metadata and check it all (see the module doc); frames stay on disk."""
    root = Path(path)
    info_path = root / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"{root} is not a LeRobot dataset (no meta/info.json); give the dataset's root directory")
    try:
        info = json.loads(info_path.read_text())
        version, features, fps = info["codebase_version"], info["features"], float(info["fps"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{info_path} is damaged ({type(e).__name__}: {e}); re-download the dataset") from None
    if version not in VERSIONS:
        raise ValueError(f"{root}: LeRobot codebase version {version!r} is not supported (reads {', '.join(VERSIONS)}); "
                         "convert it with lerobot's dataset conversion scripts to v3.0 first")
    if not fps > 0:
        raise ValueError(f"{info_path}: fps must be > 0, got {fps}")
    images = [k for k, f in features.items() if f.get("dtype") in IMAGE_DTYPES]
    if not images:
        raise ValueError(f"{root} has no image feature (features: {sorted(features)}); the toolkit learns from camera "
                         "frames: record the dataset with a camera")
    camera = camera or images[0]
    if camera not in images:
        raise ValueError(f"camera={camera!r} is not an image feature of {root}; choose one of {images}")
    act = features.get("action")
    if not act or len(act.get("shape", ())) != 1:
        raise ValueError(f"{root} has no 1-d 'action' feature (features: {sorted(features)}); the world model "
                         "needs the commands sent")
    src = LeRobotSource(root, info, camera, _episodes_v3(root, info) if version == "v3.0" else _episodes_v2(root, info))
    if not src.episodes:
        raise ValueError(f"{root} holds no episodes")
    short = [e.index for e in src.episodes if e.length < 2]
    if short:
        raise ValueError(f"{root}: episodes {short[:10]} have fewer than 2 frames; drop them "
                         "(lerobot's delete_episodes) and import again")
    _check_rows(src)
    if features[camera]["dtype"] == "video":
        _check_videos(src)
    return src


def _episodes_v3(root: Path, info: dict[str, Any]) -> list[Episode]:
    pq = pyarrow_parquet()
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{root} has no meta/episodes/chunk-*/file-*.parquet; re-download the dataset's meta/")
    out = []
    for f in files:
        names = pq.read_schema(f).names
        keys = [c.split("/")[1] for c in names if c.startswith("videos/") and c.endswith("/from_timestamp")]
        cols = ["episode_index", "length", "tasks", "data/chunk_index", "data/file_index"]
        cols += [f"videos/{k}/{c}" for k in keys for c in ("chunk_index", "file_index", "from_timestamp")]
        missing = [c for c in cols if c not in names]
        if missing:
            raise ValueError(f"{f} lacks the columns {missing}; the dataset's meta/ is damaged: re-download it")
        for r in pq.read_table(f, columns=cols).to_pylist():
            data = root / info["data_path"].format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
            videos = {k: (root / info["video_path"].format(video_key=k, chunk_index=r[f"videos/{k}/chunk_index"],
                                                           file_index=r[f"videos/{k}/file_index"]),
                          float(r[f"videos/{k}/from_timestamp"])) for k in keys}
            out.append(Episode(int(r["episode_index"]), int(r["length"]), (r["tasks"] or [""])[0], data, videos))
    return sorted(out, key=lambda e: e.index)


def _episodes_v2(root: Path, info: dict[str, Any]) -> list[Episode]:
    path = root / "meta" / "episodes.jsonl"
    if not path.is_file():
        raise ValueError(f"{root} has no meta/episodes.jsonl; re-download the dataset's meta/")
    chunk = int(info.get("chunks_size", 1000))
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            i = int(row["episode_index"])
            data = root / info["data_path"].format(episode_chunk=i // chunk, episode_index=i)
            videos = {k: (root / info["video_path"].format(episode_chunk=i // chunk, video_key=k, episode_index=i), 0.0)
                      for k, f in info["features"].items() if f.get("dtype") == "video"}
            out.append(Episode(i, int(row["length"]), (row.get("tasks") or [""])[0], data, videos))
    return sorted(out, key=lambda e: e.index)


def _check_rows(src: LeRobotSource) -> None:
    """Each episode's data rows against its length; every action finite and of the feature's width.
    Reads only the episode_index and action columns, file by file."""
    pq = pyarrow_parquet()
    adim = int(src.features["action"]["shape"][0])
    lo, hi = np.full(adim, np.inf), np.full(adim, -np.inf)
    by_file: dict[Path, list[Episode]] = {}
    for e in src.episodes:
        if src.features[src.camera]["dtype"] == "video":
            if src.camera not in e.videos:
                raise ValueError(f"{src.root}: episode {e.index} has no {src.camera} video in meta/episodes; "
                                 "re-download the dataset's meta/")
            e.video, e.start_s = e.videos[src.camera]
        by_file.setdefault(e.data, []).append(e)
    for path, eps in by_file.items():
        if not path.is_file():
            raise ValueError(f"data file {path} is missing; re-download the dataset's data/")
        t = pq.read_table(path, columns=["episode_index", "action"])
        index = t.column("episode_index").to_numpy()
        action = _matrix(t.column("action"), path, "action")
        if action.shape[1] != adim:
            raise ValueError(f"{path}: action rows have {action.shape[1]} values, info.json's feature says {adim}; "
                             "the dataset is inconsistent: re-download it")
        counts = dict(zip(*np.unique(index, return_counts=True)))
        for e in eps:
            if counts.get(e.index, 0) != e.length:
                raise ValueError(f"{src.root}: episode {e.index} has {counts.get(e.index, 0)} rows in {path.name} but "
                                 f"length {e.length} in meta/episodes: the columns disagree; re-download the dataset")
        bad = ~np.isfinite(action).all(axis=1)
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"{src.root}: {int(bad.sum())} action rows are NaN/Inf (first: episode {int(index[r])}); "
                             "drop those episodes (lerobot's delete_episodes) or repair them, then import")
        if len(action):
            lo, hi = np.minimum(lo, action.min(0)), np.maximum(hi, action.max(0))
    src.action_min, src.action_max = lo, hi


def _matrix(column: Any, path: Path, name: str) -> np.ndarray:
    """A parquet list column -> (N, D) float64, refusing rows of differing length."""
    import pyarrow as pa

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:     # the usual layout: no copy per row
        return column.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(len(column), -1)
    rows = column.to_pylist()
    widths = {len(r) if isinstance(r, (list, tuple)) else 1 for r in rows}
    if len(widths) > 1:
        raise ValueError(f"{path}: {name} rows have differing lengths {sorted(widths)}; the dataset is damaged: "
                         "re-download it")
    return np.asarray(rows, np.float64).reshape(len(rows), -1)


def _check_videos(src: LeRobotSource) -> None:
    """Every MP4 decodes and lasts as long as the episodes placed in it."""
    from worldmodel.data.mp4 import probe

    ends: dict[Path, float] = {}
    for e in src.episodes:
        assert e.video is not None
        ends[e.video] = max(ends.get(e.video, 0.0), e.start_s + e.length / src.fps)
    for path, end in ends.items():
        frames, duration = probe(path)
        have = max(frames, round(duration * src.fps))
        if have and have < round(end * src.fps):
            raise ValueError(f"{path} holds {have} frames, its episodes need {round(end * src.fps)}: the video is "
                             "truncated; re-download it")


def iter_episodes(src: LeRobotSource, image_size: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Episodes from position `start` on: frames fitted to image_size (fit_frame), the T actions, the
    (T, S) state when the dataset has observation.state, its task."""
    from worldmodel.data.mp4 import FrameReader
    from worldmodel.report.video import fit_frame

    pq = pyarrow_parquet()
    video = src.features[src.camera]["dtype"] == "video"
    cols = ["episode_index", "frame_index", "action"] + (["observation.state"] * src.has_state) + ([] if video else [src.camera])
    table_path, table, reader, last_start = None, None, None, 0.0
    try:
        for e in src.episodes[start:]:
            if e.data != table_path:
                table_path, table = e.data, pq.read_table(e.data, columns=cols)
                index = table.column("episode_index").to_numpy()
            rows = np.flatnonzero(index == e.index)
            part = table.take(rows).sort_by("frame_index")        # type: ignore[union-attr]
            if video:
                if reader is None or reader.path != e.video or e.start_s < last_start:
                    if reader is not None:
                        reader.close()
                    reader = FrameReader(e.video)                 # type: ignore[arg-type]
                last_start = e.start_s
                raw: Sequence[np.ndarray] = reader.take(e.start_s, e.length, src.fps)
            else:
                raw = [_png(v) for v in part.column(src.camera).to_pylist()]
            ep = {"pixels": np.stack([fit_frame(f, image_size) for f in raw]),
                  "action": _matrix(part.column("action"), e.data, "action").astype(np.float32), "task": e.task,
                  "index": e.index}
            if src.has_state:
                ep["state"] = _matrix(part.column("observation.state"), e.data, "observation.state")
            yield ep
    finally:
        if reader is not None:
            reader.close()


def _png(value: Any) -> np.ndarray:
    """An `image` feature's cell ({bytes, path}) -> (H, W, 3) uint8."""
    import io

    from PIL import Image

    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise ValueError("an image cell holds no bytes (images stored as separate files are not read); "
                         "re-export the dataset with embedded images or videos")
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except OSError as e:
        raise ValueError(f"an image cell cannot be decoded ({e}); re-download the dataset") from None


def import_lerobot(path: str | Path, out: str | Path, *, camera: str | None = None, image_size: int = 64,
                   action_low: Sequence[float] | None = None, action_high: Sequence[float] | None = None,
                   resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Import a LeRobot dataset into a wm dataset at `out` (crash-safe; `resume=True` continues a
    killed import after its last finished episode). Action bounds: `action_low`/`action_high`, or
    the data's range. Returns a summary."""
    from worldmodel.data.recorder import DatasetWriter

    src = open_lerobot(path, camera)
    low, high = action_bounds(src.action_min, src.action_max, action_low, action_high, str(src.root))
    state_names = src.features.get("observation.state", {}).get("names")
    writer = DatasetWriter(out, action_low=low, action_high=high, control_hz=src.fps, image_size=image_size,
                           name=f"lerobot:{src.root.resolve().name}", resume=resume, overwrite=overwrite,
                           state_names=state_names if isinstance(state_names, list) else None)
    tasks = sorted({e.task for e in src.episodes})
    writer.meta["imported"] = {"format": "lerobot", "path": str(src.root), "codebase_version": src.version,
                               "camera": src.camera, "robot_type": src.info.get("robot_type"), "tasks": tasks,
                               "episode_tasks": [tasks.index(e.task) for e in src.episodes],
                               "episode_index": [e.index for e in src.episodes]}
    from worldmodel.data.dataset import committed_indices

    start = max(committed_indices(out), default=-1) + 1
    from tqdm import tqdm

    bar = tqdm(total=src.frames, initial=sum(e.length for e in src.episodes[:start]), unit="frame",
               desc=f"import {src.root.name}", disable=not progress)
    with writer, bar:
        for ep in iter_episodes(src, image_size, start):
            writer.add_episode(pixels=ep["pixels"], action=ep["action"], state=ep.get("state"))
            bar.update(len(ep["pixels"]))
    return {"out": str(out), "episodes": len(src.episodes), "frames": src.frames, "camera": src.camera,
            "fps": src.fps, "action_low": list(map(float, low)), "action_high": list(map(float, high))}


def action_bounds(seen_min: np.ndarray, seen_max: np.ndarray, low: Sequence[float] | None,
                  high: Sequence[float] | None, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The bounds a dataset records: the ones given (refusing data outside them), else the data's range
    (a dimension that never varies gets a small band around its value)."""
    if (low is None) != (high is None):
        raise ValueError("give both action_low and action_high, or neither (then the data's range is used)")
    if low is None:
        pad = np.where(seen_max > seen_min, 0.0, 1e-3 * np.maximum(np.abs(seen_min), 1.0))
        return (seen_min - pad).astype(np.float32), (seen_max + pad).astype(np.float32)
    lo, hi = np.asarray(low, np.float64).reshape(-1), np.asarray(high, np.float64).reshape(-1)
    if lo.shape != seen_min.shape or hi.shape != seen_min.shape:
        raise ValueError(f"action_low/action_high need {seen_min.size} values (the action's width), got {lo.size}/{hi.size}")
    if (seen_min < lo).any() or (seen_max > hi).any():
        raise ValueError(f"{where}: actions range {seen_min.tolist()} .. {seen_max.tolist()}, outside action_low/"
                         f"action_high {lo.tolist()} .. {hi.tolist()}; widen the bounds or drop those episodes")
    return lo.astype(np.float32), hi.astype(np.float32)
