"""LeRobot datasets in and out: the fixture the real lerobot library wrote (tests/fixtures/lerobot_v30,
made by make_lerobot_fixture.py) imports, exports round-trip, a v2.1 layout reads, a killed import
or export resumes, and bad input is refused before anything is written."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("av")

from worldmodel.cli import main
from worldmodel.data import lerobot as L
from worldmodel.data import lerobot_export as LE
from worldmodel.data.dataset import load_dataset
from worldmodel.report.video import fit_frame

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "lerobot_v30"
sys.path.insert(0, str(FIXTURE.parent))
import make_lerobot_fixture as F

sys.path.remove(str(FIXTURE.parent))
CAMERA = "observation.images.top"


def expected(size: int) -> list[np.ndarray]:
    return [np.stack([fit_frame(F.frame(e, t), size) for t in range(n)]) for e, n in enumerate(F.LENGTHS)]


def test_the_lerobot_fixture_imports_with_frames_actions_state_and_tasks(tmp_path, capsys):
    out = tmp_path / "imp"
    assert main(["import", "lerobot", str(FIXTURE), f"out={out}", "image_size=32", "progress=false"]) == 0
    assert "3 episodes, 37 frames" in capsys.readouterr().out
    ds = load_dataset(out, columns=("pixels", "action", "state"))
    assert ds.ep_len.tolist() == list(F.LENGTHS)
    for e, frames in enumerate(expected(32)):
        ep = ds.episode(e)
        assert np.abs(ep["pixels"].astype(float) - frames).mean() < 6          # AV1 at lerobot's crf 30
        np.testing.assert_array_equal(ep["state"], [F.state(e, t) for t in range(F.LENGTHS[e])])
        np.testing.assert_array_equal(ep["action"][:-1], [F.state(e, t + 1) - F.state(e, t) for t in range(F.LENGTHS[e] - 1)])
        assert np.isnan(ep["action"][-1]).all()
    meta = ds.meta
    assert meta["control_hz"] == 10.0 and meta["state_names"] == ["x", "y"] and meta["image_size"] == 32
    imp = meta["imported"]
    assert imp["camera"] == CAMERA and imp["codebase_version"] == "v3.0" and imp["robot_type"] == "square"
    assert [imp["tasks"][i] for i in imp["episode_tasks"]] == list(F.TASKS)
    assert np.all(np.array(meta["action_low"]) < [2, 1]) and np.all(np.array(meta["action_high"]) > [2, 1])


def test_export_round_trips_and_is_laid_out_as_lerobot_lays_it_out(tmp_path):
    imp, exp, back = tmp_path / "imp", tmp_path / "exp", tmp_path / "back"
    L.import_lerobot(FIXTURE, imp, image_size=32, progress=False)
    LE.export_lerobot(imp, exp, progress=False, file_frames=20)        # three files of one episode
    assert main(["export", "lerobot", str(imp), f"out={tmp_path / 'one'}", "progress=false"]) == 0
    assert len(list((tmp_path / "one").glob("data/*/*.parquet"))) == 1
    info = json.loads((exp / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and (info["total_episodes"], info["total_frames"]) == (3, 37)
    assert info["features"][CAMERA]["shape"] == [32, 32, 3] and info["fps"] == 10
    assert len(list(exp.glob(f"videos/{CAMERA}/chunk-000/file-*.mp4"))) == 3
    eps = pq.read_table(exp / "meta" / "episodes" / "chunk-000" / "file-001.parquet").to_pylist()
    assert eps[0]["dataset_from_index"] == 12 and eps[0][f"videos/{CAMERA}/from_timestamp"] == 0.0
    tasks = pq.read_table(exp / "meta" / "tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == sorted(set(F.TASKS))
    assert set(json.loads((exp / "meta" / "stats.json").read_text())) == {CAMERA, "action", "observation.state"}
    assert not list(tmp_path.glob(".*partial"))
    L.import_lerobot(exp, back, image_size=32, progress=False)
    a, b = (load_dataset(p, columns=("pixels", "action", "state")) for p in (imp, back))
    assert b.ep_len.tolist() == a.ep_len.tolist() and b.meta["imported"]["episode_tasks"] == a.meta["imported"]["episode_tasks"]
    np.testing.assert_array_equal(b.action, a.action)
    np.testing.assert_array_equal(b.state, a.state)
    assert np.abs(b.pixels.astype(float) - a.pixels).mean() < 3                # H.264 at crf 18


def test_a_v21_dataset_reads(tmp_path):
    """v2.1: one parquet and one MP4 per episode, meta/episodes.jsonl (built here from the fixture)."""
    from worldmodel.data.mp4 import Mp4Writer

    root = tmp_path / "v21"
    info = json.loads((FIXTURE / "meta" / "info.json").read_text())
    info.update(codebase_version="v2.1", data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
                video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4")
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    table = pq.read_table(next(FIXTURE.glob("data/*/*.parquet")))
    lines = []
    for e, n in enumerate(F.LENGTHS):
        path = root / f"data/chunk-000/episode_{e:06d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(np.asarray(table.column("episode_index")) == e), path)
        w = Mp4Writer(root / f"videos/chunk-000/{CAMERA}/episode_{e:06d}.mp4", 10, F.W, F.H)
        w.add(np.stack([F.frame(e, t) for t in range(n)]))
        w.close()
        lines.append(json.dumps({"episode_index": e, "tasks": [F.TASKS[e]], "length": n}))
    (root / "meta" / "episodes.jsonl").write_text("\n".join(lines))
    L.import_lerobot(root, tmp_path / "imp", image_size=32, progress=False)
    ds = load_dataset(tmp_path / "imp", columns=("pixels", "action"))
    assert ds.ep_len.tolist() == list(F.LENGTHS) and ds.meta["imported"]["codebase_version"] == "v2.1"
    assert np.abs(ds.pixels.astype(float) - np.concatenate(expected(32))).mean() < 3


def test_a_killed_import_and_a_killed_export_resume(tmp_path, monkeypatch):
    out = tmp_path / "imp"
    real = L.iter_episodes

    def dies_after_two(*a, **k):
        for i, ep in enumerate(real(*a, **k)):
            if i == 2:
                raise KeyboardInterrupt
            yield ep

    monkeypatch.setattr(L, "iter_episodes", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        L.import_lerobot(FIXTURE, out, image_size=16, progress=False)
    monkeypatch.setattr(L, "iter_episodes", real)
    assert load_dataset(out, columns=()).num_episodes == 2
    L.import_lerobot(FIXTURE, out, image_size=16, resume=True, progress=False)
    ds = load_dataset(out, columns=("action",))
    assert ds.ep_len.tolist() == list(F.LENGTHS) and ds.ep_index.tolist() == [0, 1, 2]

    exp = tmp_path / "exp"
    real_group = LE._write_group
    monkeypatch.setattr(LE, "_write_group", lambda part, data, g, *a: (_ for _ in ()).throw(KeyboardInterrupt)
                        if g == 1 else real_group(part, data, g, *a))
    with pytest.raises(KeyboardInterrupt):
        LE.export_lerobot(out, exp, progress=False, file_frames=20)
    assert not exp.exists() and (tmp_path / ".exp.partial").is_dir()           # nothing half-written at out=
    with pytest.raises(FileExistsError, match="resume=true"):
        LE.export_lerobot(out, exp, progress=False, file_frames=20)
    monkeypatch.setattr(LE, "_write_group", real_group)
    (tmp_path / ".exp.partial" / "data" / "chunk-000" / "file-001.parquet.999.tmp").write_bytes(b"torn")
    LE.export_lerobot(out, exp, progress=False, file_frames=20, resume=True)
    assert not list(exp.rglob("*.tmp")) and not (exp / "wm_export.json").exists()
    LE.export_lerobot(out, tmp_path / "fresh", progress=False, file_frames=20)
    for f in ("data/chunk-000/file-000.parquet", "data/chunk-000/file-002.parquet"):
        assert pq.read_table(exp / f).equals(pq.read_table(tmp_path / "fresh" / f))


def _edit_info(root: Path, **changes) -> None:
    p = root / "meta" / "info.json"
    info = json.loads(p.read_text())
    for k, v in changes.items():
        if v is None:
            info["features"].pop(k)
        else:
            info[k] = v
    p.write_text(json.dumps(info))


def _edit_parquet(path: Path, column: str, fn) -> None:
    import pyarrow as pa

    t = pq.read_table(path)
    values = t.column(column).to_pylist()
    t = t.set_column(t.schema.get_field_index(column), column, pa.array(fn(values), t.schema.field(column).type))
    pq.write_table(t, path)


VIDEO = f"videos/{CAMERA}/chunk-000/file-000.mp4"
BAD = {
    "no image feature": (lambda r: _edit_info(r, **{CAMERA: None}), "no image feature"),
    "unknown version": (lambda r: _edit_info(r, codebase_version="v1.6"), "v1.6.*not supported"),
    "missing video": (lambda r: (r / VIDEO).unlink(), "is missing"),
    "undecodable video": (lambda r: (r / VIDEO).write_bytes(b"\0" * 999), "cannot be decoded"),
    "lengths disagree": (lambda r: _edit_parquet(next(r.glob("meta/episodes/*/*.parquet")), "length",
                                                 lambda v: [v[0], v[1] - 1, v[2]]), "episode 1 has 15 rows"),
    "NaN action": (lambda r: _edit_parquet(next(r.glob("data/*/*.parquet")), "action",
                                           lambda v: [[float("nan"), 1.0]] + v[1:]), "NaN"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_lerobot_input_is_refused_before_anything_is_written(tmp_path, case):
    root = tmp_path / "src"
    shutil.copytree(FIXTURE, root)
    damage, message = BAD[case]
    damage(root)
    with pytest.raises(ValueError, match=message):
        L.import_lerobot(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_actions_outside_given_bounds_and_an_unknown_camera_are_refused(tmp_path):
    with pytest.raises(ValueError, match="outside action_low"):
        L.import_lerobot(FIXTURE, tmp_path / "o", action_low=[-1, -1], action_high=[1, 1], progress=False)
    with pytest.raises(ValueError, match="choose one of"):
        L.import_lerobot(FIXTURE, tmp_path / "o", camera="observation.images.wrist", progress=False)
    assert not (tmp_path / "o").exists()


def test_import_and_export_help_do_not_import_torch():
    for cmd in ("import", "export"):
        code = ("import sys; from worldmodel.cli import main; rc = main(sys.argv[1:]); "
                "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
        out = subprocess.run([sys.executable, "-c", code, cmd, "--help"], capture_output=True, text=True, cwd=REPO, check=False)
        assert out.returncode == 0 and "keys" in out.stdout, out.stderr
