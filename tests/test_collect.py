"""`wm collect` / `wm inspect` / `wm preview` end to end on TwoRoom at tiny sizes.

Includes the crash-safety proof: a real collection process is SIGKILLed at random moments, the
dataset is read after every kill (only whole episodes, never duplicates), and `resume=true`
finishes it into exactly the data of an uninterrupted run.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from worldmodel.io import exclusive_lock
from worldmodel.data import dataset as D
from worldmodel.report import video
from worldmodel.cli import main

ROOT = Path(__file__).resolve().parent.parent
COLS = ("pixels", "action", "state", "proprio")
SMALL = ["env=tworoom", "episodes=4", "image_size=32", "episode_len=20", "seed=3", "progress=false"]


def _collect(out: Path, *extra: str) -> int:
    return main(["collect", *SMALL, f"out={out}", *extra])


def _same(a: D.Dataset, b: D.Dataset) -> None:
    assert a.ep_index.tolist() == b.ep_index.tolist() and a.ep_seed.tolist() == b.ep_seed.tolist()
    for k in COLS:
        np.testing.assert_array_equal(a.columns[k], b.columns[k])


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("collect") / "tw"
    assert _collect(out, "workers=2") == 0
    return out


def test_collect_round_trip(two_workers):
    ds = D.load_dataset(two_workers, columns=COLS)
    assert (ds.num_episodes, ds.num_frames) == (4, 80)
    assert ds.pixels.shape == (80, 32, 32, 3) and ds.pixels.dtype == np.uint8
    assert ds.state.shape == (80, 4) and ds.proprio.shape == (80, 4) and ds.action.shape == (80, 2)
    last = ds.ep_offset + ds.ep_len - 1
    assert np.isnan(ds.action[last]).all()                             # no action at the last row
    acted = np.delete(ds.action, last, axis=0)
    assert np.isfinite(acted).all() and (np.abs(acted) <= 1.0).all()   # clipped to the bounds
    assert ds.pixels.std() > 0 and np.abs(np.diff(ds.state[:20, :2], axis=0)).sum() > 0
    assert len(list(two_workers.glob("shard_*.h5"))) == 2              # one shard per worker
    meta = json.loads((two_workers / "meta.json").read_text())
    assert meta["format"] == D.FORMAT and meta["env"] == "tworoom" and meta["env_id"] == "wm/TwoRoom-v0"
    assert (meta["episodes"], meta["episode_len"], meta["image_size"], meta["action_dim"]) == (4, 20, 32, 2)
    assert meta["state_names"] == ["x", "y", "vx", "vy"] and meta["policy"] == "expert"
    assert "mujoco" in meta["versions"] and meta["command"][:2] == ["wm", "collect"]
    cfg = json.loads((two_workers / "config.json").read_text())
    assert cfg["episode_len"] == 20 and cfg["policy"] == "expert" and cfg["env"]["name"] == "tworoom"


def test_deterministic_across_worker_counts_and_shards(two_workers, tmp_path):
    assert _collect(tmp_path / "w1", "workers=1") == 0
    _same(D.load_dataset(two_workers, columns=COLS), D.load_dataset(tmp_path / "w1", columns=COLS))
    union = tmp_path / "union"
    for i in (0, 1):                            # two "machines", merged by copying the shards
        part = tmp_path / f"m{i}"
        assert _collect(part, "workers=1", f"shard={i}", "num_shards=2") == 0
        assert len(D.load_dataset(part, columns=()).ep_len) == 2
        shutil.copytree(part, union, dirs_exist_ok=True)
    metas = [json.loads((tmp_path / f"m{i}" / "meta.json").read_text()) for i in (0, 1)]
    for m in metas:
        assert m.pop("command")[-2:] == ["shard=0..1", "num_shards=2"]     # differ only in out=
    assert metas[0] == metas[1]
    _same(D.load_dataset(two_workers, columns=COLS), D.load_dataset(union, columns=COLS))


@pytest.mark.parametrize("env, env_id, state_dim, action_dim", [
    ("InvertedPendulum-v5", "InvertedPendulum-v5", 4, 1),                 # a gymnasium MuJoCo id
    ("dm_control/cartpole-swingup", "dm_control/cartpole-swingup", 4, 1),  # a dm_control suite task
])
def test_collect_through_the_generic_adapters(tmp_path, env, env_id, state_dim, action_dim):
    out = tmp_path / "d"
    assert main(["collect", f"env={env}", "episodes=2", "episode_len=10", "image_size=32",
                 "progress=false", f"out={out}"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["env"] == env and meta["env_id"] == env_id and meta["policy"] == "noise"
    ds = D.load_dataset(out, columns=COLS)
    assert ds.state.shape == (20, state_dim) and ds.action.shape == (20, action_dim)
    assert ds.pixels.shape == (20, 32, 32, 3) and ds.pixels.std() > 0
    assert np.abs(np.diff(ds.state[:10], axis=0)).sum() > 0          # the system moved


def test_expert_without_a_scripted_expert_says_it_collects_noise(tmp_path, capsys):
    assert main(["collect", "env=InvertedPendulum-v5", "policy=expert", "episodes=1", "episode_len=5",
                 "image_size=16", "progress=false", f"out={tmp_path / 'd'}"]) == 0
    assert "no scripted expert; policy=expert collects correlated noise" in capsys.readouterr().err


def test_episodes_whose_physics_diverges_end_at_their_last_valid_step(tmp_path, capsys):
    """dm_control's LQR under the noise policy at its declared bounds (+-1e10, kept on purpose) blows
    up within tens of steps: each episode is kept up to its last valid state, and the collection
    says how many ended so."""
    out = tmp_path / "lqr"
    assert main(["collect", "env=dm_control/lqr-lqr_6_2", "+env.kwargs.action_limit=1e10", "episodes=2",
                 "episode_len=200", "image_size=16", f"out={out}"]) == 0
    assert "2 of 2 episodes ended early: the physics diverged" in capsys.readouterr().err
    ds = D.load_dataset(out, columns=COLS)
    assert (ds.ep_len < 200).all() and (ds.ep_len >= 2).all()
    assert np.isfinite(ds.state).all()
    for start, n in zip(ds.ep_offset, ds.ep_len):              # an action on every row but the last
        assert np.isfinite(ds.action[start:start + n - 1]).all() and np.isnan(ds.action[start + n - 1]).all()


@pytest.mark.parametrize("args, needle", [
    (["env=nosuchenv"], "tworoom"),                                    # lists the envs
    (["episodes"], "key=value"),                                       # malformed override
    (["workers=0"], "workers must be >= 1"),
    (["policy=nosuch"], "expert"),                                     # lists the policies
    (["shard=2", "num_shards=2"], "shard must be in"),
    (["bogus=1"], "bogus"),
    (["+policy_kwargs.bogus=1"], "rejected policy_kwargs"),           # names the policy's own error
    (["resume=true", "overwrite=true"], "only one of"),
    (["episode_len=1000000000"], "lower episode_len"),                # would run out of memory
])
def test_bad_input_refused_before_any_work(tmp_path, capsys, args, needle):
    out = tmp_path / "never"
    assert main(["collect", *SMALL, f"out={out}", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_policy_kwargs_change_the_data_and_are_recorded(two_workers, tmp_path, capsys):
    """+policy_kwargs.K=V goes to the data policy's constructor: other data than the defaults', in
    meta.json's key and command; data collected without them keeps its key (it still resumes), and a
    resume with other kwargs is refused."""
    out = tmp_path / "noisy"
    assert _collect(out, "+policy_kwargs.noise=1.0", "workers=1") == 0
    meta, plain = (json.loads((d / "meta.json").read_text()) for d in (out, two_workers))
    assert meta["policy_kwargs"] == meta["key"]["policy_kwargs"] == {"noise": 1.0}
    assert "+policy_kwargs.noise=1.0" in meta["command"] and "policy_kwargs" not in plain["key"]
    noisy, default = (D.load_dataset(d, columns=("action",)) for d in (out, two_workers))
    assert noisy.ep_seed.tolist() == default.ep_seed.tolist()           # same episodes, other actions
    assert not np.allclose(np.nan_to_num(noisy.action), np.nan_to_num(default.action))
    assert _collect(out, "resume=true", "+policy_kwargs.noise=0.5") == 2
    assert "policy_kwargs" in capsys.readouterr().err
    assert main(["inspect", str(out)]) == 0
    assert "policy expert noise=1.0," in capsys.readouterr().out


def test_existing_output_and_changed_config_refused(two_workers, capsys):
    before = sorted(p.name for p in two_workers.rglob("*"))
    assert _collect(two_workers, "workers=2") == 2
    err = capsys.readouterr().err
    assert "resume=true" in err and "overwrite=true" in err
    assert _collect(two_workers, "resume=true", "seed=4", "episode_len=21") == 2
    err = capsys.readouterr().err
    assert "episode_len: 20 -> 21" in err and "seed: 3 -> 4" in err
    assert _collect(two_workers, "resume=true", "episodes=6") == 2
    assert "not grown in place" in capsys.readouterr().err
    assert sorted(p.name for p in two_workers.rglob("*")) == before
    busy = exclusive_lock(two_workers / ".lock-shard000", "busy")   # a collector still writing it
    try:
        assert _collect(two_workers, "overwrite=true") == 2
        assert "another `wm collect` is writing" in capsys.readouterr().err
    finally:
        busy.close()
    assert sorted(p.name for p in two_workers.rglob("*")) == before
    assert _collect(two_workers, "resume=true", "workers=1") == 0     # nothing left to do: a no-op
    assert D.load_dataset(two_workers, columns=()).num_episodes == 4


def test_overwrite_refuses_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("precious")
    assert _collect(tmp_path, "overwrite=true") == 2
    assert "does not write" in capsys.readouterr().err and (tmp_path / "notes.txt").exists()


def test_overwrite_needs_the_collection_marker_not_file_names(two_workers, tmp_path, capsys):
    """Issue #36: a folder holding a `meta.json` (even `{}`) or a `shard_*.h5` beside a document was
    deleted whole. overwrite=true now needs the marker `wm collect` wrote, and nothing foreign."""
    for name, text in (("meta.json", "{}"), ("shard_00000.h5", "not hdf5")):
        d = tmp_path / name
        d.mkdir()
        (d / name).write_text(text)
        assert _collect(d, "overwrite=true") == 2
        assert ".wm-output.json" in capsys.readouterr().err and (d / name).read_text() == text
        (d / "report.docx").write_text("unrelated")
        assert _collect(d, "overwrite=true") == 2
        assert "report.docx" in capsys.readouterr().err and (d / "report.docx").exists()
    mine = tmp_path / "mine"
    shutil.copytree(two_workers, mine)
    (mine / "notes.txt").write_text("mine")                   # a marked collection with a foreign file
    assert _collect(mine, "overwrite=true") == 2 and (mine / "notes.txt").exists()
    (mine / "notes.txt").unlink()
    assert _collect(mine, "overwrite=true", "episodes=2") == 0   # marked and nothing else: replaced
    assert D.load_dataset(mine, columns=()).num_episodes == 2


def test_a_collection_the_disk_cannot_hold_is_refused_before_any_output(tmp_path, capsys):
    """Issue #36: episodes=10**12 built a set of 10**12 ints and left a meta.json claiming them."""
    out = tmp_path / "huge"
    assert _collect(out, "episodes=1000000000000") == 2
    err = capsys.readouterr().err
    assert "GiB free" in err and "lower episodes=" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_damaged_staged_episode_on_resume_is_a_one_line_refusal(two_workers, tmp_path, capsys):
    """Issue #36: a truncated staged episode on resume gave a 30-50-line traceback."""
    out = tmp_path / "d"
    shutil.copytree(two_workers, out)
    last = max(out.glob("shard_*.h5"))
    first = int(last.name[6:11])
    last.unlink()                                              # its episodes: one staged, cut short
    (out / D.STAGING).mkdir()
    (out / D.STAGING / f"ep_{first:08d}.npz").write_bytes(b"PK\x03\x04 cut short")
    assert _collect(out, "resume=true", "workers=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"ep_{first:08d}.npz is damaged" in err and "resume=true" in err
    (out / D.STAGING / f"ep_{first:08d}.npz").unlink()         # the fix it names
    assert _collect(out, "resume=true", "workers=1") == 0
    _same(D.load_dataset(two_workers, columns=COLS), D.load_dataset(out, columns=COLS))


def test_disk_full_during_collection_is_one_line_and_resume_finishes(two_workers, tmp_path, capsys, monkeypatch):
    out = tmp_path / "d"
    real, calls = np.savez, []

    def fill_up(*a, **kw):                                     # the third episode finds the disk full
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(*a, **kw)

    monkeypatch.setattr(np, "savez", fill_up)
    assert _collect(out, "workers=1") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "disk full writing" in err and "resume=true" in err
    monkeypatch.undo()
    assert len(D.committed_indices(out)) == 2 and not list(out.rglob("*.tmp"))
    assert _collect(out, "resume=true", "workers=1") == 0
    _same(D.load_dataset(two_workers, columns=COLS), D.load_dataset(out, columns=COLS))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except (OSError, IndexError):
        return True


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    crash = tmp_path / "crash"
    args = ["collect", "env=tworoom", "episodes=96", "episode_len=30", "image_size=32", "seed=11",
            "workers=2", "progress=false", "resume=true", f"out={crash}"]
    assert main([*args[:-2], "workers=1", f"out={tmp_path / 'ref'}"]) == 0
    ref = D.load_dataset(tmp_path / "ref", columns=COLS)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUJOCO_GL": "egl"}
    code = "import sys; from worldmodel.cli import main; sys.exit(main(sys.argv[1:]))"
    rng = random.Random(0)
    kills, startup, fresh = 0, 1.5, True
    for attempt in range(10):
        before = len(D.committed_indices(crash)) if crash.exists() else 0
        p = subprocess.Popen([sys.executable, "-c", code, *args], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if fresh:
            time.sleep(rng.uniform(0.2, startup))                     # during start-up
            fresh = False
        else:                                                          # while episodes are flowing
            t0 = time.time()
            while p.poll() is None and time.time() - t0 < 30 and \
                    (len(D.committed_indices(crash)) if crash.exists() else 0) <= before:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
        if p.poll() is not None:                                       # finished before the kill:
            assert p.returncode == 0                                   # this machine outran the
            shutil.rmtree(crash)                                       # schedule; start afresh
            startup, fresh = startup / 2, True                         # with an earlier first kill
            continue
        kids = _children(p.pid)
        os.kill(p.pid, signal.SIGKILL) if attempt % 2 else os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        kills += 1
        deadline = time.time() + 10                                    # workers die with their parent
        while not all(_gone(k) for k in kids) and time.time() < deadline:
            time.sleep(0.05)
        assert all(_gone(k) for k in kids), "workers outlived the killed collection"
        if crash.exists() and D.committed_indices(crash):
            ds = D.load_dataset(crash, columns=COLS)                   # readable after any kill
            assert (ds.ep_len == 30).all() and len(set(ds.ep_index.tolist())) == ds.num_episodes
            for e, i in enumerate(ds.ep_index):                        # every episode whole and exact
                np.testing.assert_array_equal(ds.episode(e)["pixels"], ref.episode(int(i))["pixels"])
                np.testing.assert_array_equal(ds.episode(e)["state"], ref.episode(int(i))["state"])
        if kills == 4:
            break
    assert kills >= 3, f"the collection finished after only {kills} kills (in 10 tries)"
    assert main(args) == 0                                             # resume to completion
    _same(ref, D.load_dataset(crash, columns=COLS))
    assert not list(crash.rglob("*.tmp")) and not (crash / D.STAGING).exists()


def test_inspect_reports_stats_and_metrics(two_workers, capsys):
    assert main(["inspect", str(two_workers), "json=true"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["episodes"], r["frames"], r["episode_len"]["mean"]) == (4, 80, 20.0)
    assert len(r["action"]["mean"]) == 2 and r["state"]["names"] == ["x", "y", "vx", "vy"]
    assert -1.0 <= r["action"]["min"][0] <= r["action"]["max"][0] <= 1.0
    assert 0.0 <= r["metrics"]["crossed_door"]["mean"] <= 1.0 and r["disk_bytes"] > 80 * 32 * 32 * 3
    assert main(["inspect", str(two_workers)]) == 0
    text = capsys.readouterr().out
    assert "crossed_door:" in text and "% of episodes" in text and "episodes 4" in text


def test_preview_mp4_and_gif_fallback(two_workers, tmp_path, monkeypatch):
    import imageio.v3 as iio


    assert main(["preview", str(two_workers), "episodes=2", f"out={tmp_path / 'p.mp4'}"]) == 0
    frames = iio.imread(tmp_path / "p.mp4")
    assert frames.shape[0] == 20 and frames.shape[1] >= 128 and frames.std() > 0
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    assert main(["preview", str(two_workers), "episodes=3", "layout=sequence", f"out={tmp_path / 'q.mp4'}"]) == 0
    assert not (tmp_path / "q.mp4").exists()
    assert iio.imread(tmp_path / "q.gif").shape[0] == 60
