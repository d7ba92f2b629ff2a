"""A wm dataset written as a LeRobot v3.0 dataset (`wm export lerobot DATA out=PATH`), laid out as
the `lerobot` library lays it out, so its `LeRobotDataset(repo_id, root=PATH)` loads it.

Episodes go into files of about `file_frames` frames: `data/chunk-000/file-000.parquet` (action,
observation.state, timestamp, frame_index, episode_index, index, task_index), the camera's H.264
`videos/<camera>/chunk-000/file-000.mp4` and that file's rows of `meta/episodes/` (with per-episode
stats); `meta/info.json`, `meta/stats.json` and `meta/tasks.parquet` close it. The work happens in
`.<name>.partial/` beside `out`, every file written under a temporary name and renamed, the episode
table of a file last; `resume=True` keeps the finished files of a killed export, and the finished
export is renamed to `out`. Our last row of an episode has no action (NaN); LeRobot wants one on
every frame, so it is written as the step before's.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.data.lerobot import pyarrow_parquet
from worldmodel.io import write_json_atomic

FILE_FRAMES = 20_000            # frames per data / video file (LeRobot splits by size; any split loads)
CHUNK_FILES = 1000              # files per chunk-XXX folder (LeRobot's default)
STATS = ("min", "max", "mean", "std", "count")
PANDAS_INDEX = {"index_columns": ["__index_level_0__"],
                "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                    "metadata": {"encoding": "UTF-8"}}],
                "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                             "numpy_type": "int64", "metadata": None},
                            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                             "numpy_type": "object", "metadata": None}],
                "attributes": {}, "creator": {"library": "pyarrow", "version": "14"}}


def _file_path(kind: str, g: int, camera: str = "") -> str:
    where = {"data": "data", "video": f"videos/{camera}", "episodes": "meta/episodes"}[kind]
    ext = "mp4" if kind == "video" else "parquet"
    return f"{where}/chunk-{g // CHUNK_FILES:03d}/file-{g % CHUNK_FILES:03d}.{ext}"


def export_lerobot(data: str | Path, out: str | Path, *, camera: str | None = None, task: str | None = None,
                   robot_type: str | None = None, resume: bool = False, overwrite: bool = False,
                   progress: bool = True, file_frames: int = FILE_FRAMES) -> dict[str, Any]:
    """Write the wm dataset `data` as a LeRobot v3.0 dataset at `out` (see the module doc)."""
    data, out = Path(data), Path(out)
    ds = checked_dataset(data, "LeRobot")
    meta = ds.meta
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=true to replace it, or another path")
    imported = meta.get("imported") or {}
    camera = camera or imported.get("camera") or "observation.image"
    if not task and imported.get("tasks") and len(imported.get("episode_tasks", ())) == ds.num_episodes:
        tasks, ep_task = list(imported["tasks"]), list(imported["episode_tasks"])   # the import's, kept
    else:
        tasks, ep_task = [task or meta.get("env") or meta.get("source") or "wm dataset"], [0] * ds.num_episodes
    fps = float(meta.get("control_hz") or 0)
    if not fps > 0:
        raise ValueError(f"{data}/meta.json records no control_hz; LeRobot needs the frame rate")
    part = out.with_name(f".{out.name}.partial")
    plan = {"source": str(data.resolve()), "key": meta.get("key"), "episodes": ds.num_episodes, "camera": camera,
            "tasks": tasks, "file_frames": file_frames}
    done = _open_partial(part, plan, resume, overwrite)
    groups = _groups(ds.ep_len, file_frames)
    from tqdm import tqdm

    first_row = np.concatenate([[0], np.cumsum(ds.ep_len)]).astype(np.int64)
    bar = tqdm(total=int(ds.ep_len.sum()), initial=int(first_row[groups[done][0]] if done < len(groups) else first_row[-1]),
               unit="frame", desc=f"export {data.name}", disable=not progress)
    with bar:
        for g in range(done, len(groups)):
            _write_group(part, data, g, groups[g], first_row, camera, fps, ep_task, tasks, bar)
    state_names = meta.get("state_names")
    _finish(part, camera, fps, robot_type or imported.get("robot_type"), tasks, int(meta.get("image_size", 0)),
            state_names)
    if out.exists():
        shutil.rmtree(out)
    os.replace(part, out)
    (out / "wm_export.json").unlink()          # after the rename: a kill just before leaves a resumable export
    return {"out": str(out), "episodes": ds.num_episodes, "frames": int(ds.ep_len.sum()), "camera": camera, "fps": fps}


def checked_dataset(data: Path, fmt: str) -> Any:
    """A wm dataset's episode table and actions, refused with the fix named when it cannot be exported
    (no frames, NaN/Inf actions inside episodes, actions outside the recorded bounds)."""
    from worldmodel.data.clips import action_problems
    from worldmodel.data.dataset import load_dataset

    ds = load_dataset(data, columns=("action",))
    if "pixels" not in ds.available:
        raise ValueError(f"{data} holds no pixels; only datasets with camera frames export to {fmt}")
    bad = action_problems(ds.action, ds.ep_len, ds.ep_offset, ds.meta)
    if bad["nonfinite"] or bad["out_of_bounds"]:
        raise ValueError(f"{data}: {bad['nonfinite']} NaN/Inf action rows inside episodes and {bad['out_of_bounds'] or 0} "
                         "outside the recorded bounds (`wm inspect` shows them); repair or drop those episodes first")
    return ds


def _groups(ep_len: np.ndarray, file_frames: int) -> list[list[int]]:
    """Consecutive episodes per file, about file_frames frames each (at least one episode)."""
    groups: list[list[int]] = [[]]
    n = 0
    for e, length in enumerate(ep_len.tolist()):
        if groups[-1] and n + length > file_frames:
            groups.append([])
            n = 0
        groups[-1].append(e)
        n += length
    return groups


def _open_partial(part: Path, plan: dict[str, Any], resume: bool, overwrite: bool) -> int:
    """The number of finished files in `part` (0 for a new export), refusing to mix exports."""
    plan_path = part / "wm_export.json"
    if part.exists() and plan_path.is_file() and resume:
        old = json.loads(plan_path.read_text())
        if old != plan:
            diff = [k for k in plan if old.get(k) != plan[k]]
            raise ValueError(f"{part} holds an export with other settings ({', '.join(diff)} differ); resume with the "
                             f"same ones, or delete {part}")
        for tmp in part.rglob("*.tmp"):               # the file a kill interrupted, rewritten now
            tmp.unlink()
        return len(list(part.glob("meta/episodes/chunk-*/file-*.parquet")))
    if part.exists():
        if not (resume or overwrite) and plan_path.is_file():
            raise FileExistsError(f"{part} holds a killed export; pass resume=true to finish it, or delete it")
        shutil.rmtree(part)
    part.mkdir(parents=True)
    write_json_atomic(plan_path, plan)
    return 0


def _stats(x: np.ndarray) -> dict[str, Any]:
    """min/max/mean/std/count of (N, D) rows (images: (N, 3, 1, 1) per channel, values in [0, 1])."""
    return {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(x)])}


def _image_stats(frames: np.ndarray) -> dict[str, Any]:
    px = frames.reshape(-1, 3).astype(np.float64) / 255.0
    return {k: (v.reshape(3, 1, 1) if k != "count" else np.array([len(frames)])) for k, v in _stats(px).items()}


def _write_group(part: Path, data: Path, g: int, episodes: list[int], first_row: np.ndarray, camera: str,
                 fps: float, ep_task: list[int], tasks: list[str], bar: Any) -> None:
    """One file's episodes: its video, its data rows, then (marking it finished) its episode table."""
    import pyarrow as pa

    from worldmodel.data.dataset import load_dataset
    from worldmodel.data.mp4 import Mp4Writer

    pq = pyarrow_parquet()
    video, cols, rows_meta = None, {}, []
    for e in episodes:
        ep = load_dataset(data, columns=("pixels", "action", "state"), episodes=[e])
        px, action = ep.pixels, ep.action.copy()
        action[-1] = action[-2]                                   # LeRobot: an action on every frame
        n = len(px)
        if video is None:
            video = Mp4Writer(part / _file_path("video", g, camera), fps, px.shape[2], px.shape[1])
        start_s = video.frames / fps
        video.add(px)
        row = {"action": action.astype(np.float32)}
        if "state" in ep.columns:
            row["observation.state"] = ep.state.astype(np.float32)
        k = np.arange(n)
        row.update(timestamp=(k / fps).astype(np.float32), frame_index=k, episode_index=np.full(n, e),
                   index=first_row[e] + k, task_index=np.full(n, ep_task[e]))
        for c, v in row.items():
            cols.setdefault(c, []).append(v)
        m: dict[str, Any] = {"episode_index": e, "tasks": [tasks[ep_task[e]]], "length": n,
                             "data/chunk_index": g // CHUNK_FILES, "data/file_index": g % CHUNK_FILES,
                             "dataset_from_index": int(first_row[e]), "dataset_to_index": int(first_row[e] + n),
                             f"videos/{camera}/chunk_index": g // CHUNK_FILES, f"videos/{camera}/file_index": g % CHUNK_FILES,
                             f"videos/{camera}/from_timestamp": start_s, f"videos/{camera}/to_timestamp": start_s + n / fps}
        for name, st in ((camera, _image_stats(px)), ("action", _stats(row["action"].astype(np.float64))),
                         *((("observation.state", _stats(ep.state)),) if "state" in ep.columns else ())):
            m.update({f"stats/{name}/{s}": np.asarray(st[s]).tolist() for s in STATS})
        m["meta/episodes/chunk_index"], m["meta/episodes/file_index"] = g // CHUNK_FILES, g % CHUNK_FILES
        rows_meta.append(m)
        bar.update(n)
    assert video is not None
    video.close()
    arrays, hf = {}, {}
    for c, parts in cols.items():
        v = np.concatenate(parts)
        if v.ndim == 2:
            arrays[c] = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
            hf[c] = {"feature": {"dtype": "float32", "_type": "Value"}, "length": v.shape[1], "_type": "List"}
        else:
            arrays[c] = pa.array(v)
            hf[c] = {"dtype": str(v.dtype), "_type": "Value"}
    table = pa.table(arrays).replace_schema_metadata({"huggingface": json.dumps({"info": {"features": hf}})})
    _write_parquet(pq, table, part / _file_path("data", g))
    _write_parquet(pq, pa.Table.from_pylist(rows_meta), part / _file_path("episodes", g))


def _write_parquet(pq: Any, table: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="snappy")
    os.replace(tmp, path)


def _finish(part: Path, camera: str, fps: float, robot_type: str | None, tasks: list[str], size: int,
            state_names: list[str] | None) -> None:
    """info.json, stats.json (the episodes' stats pooled) and tasks.parquet, from the finished files."""
    import pyarrow as pa

    pq = pyarrow_parquet()
    files = sorted(part.glob("meta/episodes/chunk-*/file-*.parquet"))
    eps = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
    has_state = "stats/observation.state/min" in eps[0]
    stats = {}
    for name in (camera, "action", *(("observation.state",) if has_state else ())):
        st = {s: np.array([r[f"stats/{name}/{s}"] for r in eps], np.float64) for s in STATS}
        w = st["count"].reshape(-1, *[1] * (st["mean"].ndim - 1))          # pooled over episodes
        mean = (w * st["mean"]).sum(0) / w.sum()
        var = (w * (st["std"] ** 2 + (st["mean"] - mean) ** 2)).sum(0) / w.sum()
        stats[name] = {"min": st["min"].min(0).tolist(), "max": st["max"].max(0).tolist(), "mean": mean.tolist(),
                       "std": np.sqrt(var).tolist(), "count": [int(w.sum())]}
    fps_out: float | int = int(fps) if float(fps).is_integer() else fps
    adim = len(stats["action"]["min"])
    features: dict[str, Any] = {
        camera: {"dtype": "video", "shape": [size, size, 3], "names": ["height", "width", "channels"],
                 "info": {"video.height": size, "video.width": size, "video.codec": "h264",
                          "video.pix_fmt": "yuv420p" if size % 2 == 0 else "yuv444p", "video.is_depth_map": False,
                          "video.fps": fps_out, "video.channels": 3, "has_audio": False}},
        "action": {"dtype": "float32", "shape": [adim], "names": [f"a{i}" for i in range(adim)]},
    }
    if has_state:
        sdim = len(stats["observation.state"]["min"])
        names = state_names if state_names and len(state_names) == sdim else [f"s{i}" for i in range(sdim)]
        features["observation.state"] = {"dtype": "float32", "shape": [sdim], "names": list(names)}
    for c, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
                  ("task_index", "int64")):
        features[c] = {"dtype": dt, "shape": [1], "names": None}
    total = sum(r["length"] for r in eps)
    info = {"codebase_version": "v3.0", "robot_type": robot_type, "total_episodes": len(eps), "total_frames": total,
            "total_tasks": len(tasks), "chunks_size": CHUNK_FILES, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps_out, "splits": {"train": f"0:{len(eps)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "__index_level_0__": pa.array(tasks, pa.string())})
    _write_parquet(pq, table.replace_schema_metadata({"pandas": json.dumps(PANDAS_INDEX)}), part / "meta" / "tasks.parquet")
    write_json_atomic(part / "meta" / "stats.json", stats)
    write_json_atomic(part / "meta" / "info.json", info)
