"""The dataset format: writer -> reader round trip, crash windows, LeWM-style files, bad paths."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from worldmodel.io import write_json_atomic
from worldmodel.data import dataset as D

ATTRS = {"format": D.FORMAT, "key": {"env": "test", "seed": 0}}


def _episode(rng: np.random.Generator, index: int, length: int) -> dict:
    ep = {"pixels": rng.integers(0, 256, (length, 8, 8, 3), dtype=np.uint8),
          "action": rng.normal(size=(length, 2)).astype(np.float32),
          "state": rng.normal(size=(length, 4)),
          "proprio": rng.normal(size=(length, 3)).astype(np.float32),
          "ep_index": index, "ep_seed": 1000 + index}
    ep["action"][-1] = np.nan
    return ep


def _make_dir(tmp_path, n: int = 7):
    """A dataset dir with n staged episodes of varied length; returns (dir, episodes, staged paths)."""
    rng = np.random.default_rng(0)
    eps = [_episode(rng, i, int(rng.integers(3, 9))) for i in range(n)]
    write_json_atomic(tmp_path / D.META, ATTRS)
    return tmp_path, eps, [D.stage_episode(tmp_path, e) for e in eps]


def _assert_matches(ds: D.Dataset, eps: list[dict]) -> None:
    assert ds.num_episodes == len(eps)
    assert ds.num_frames == sum(len(e["pixels"]) for e in eps)
    assert ds.ep_index.tolist() == [e["ep_index"] for e in eps]
    assert ds.ep_seed.tolist() == [e["ep_seed"] for e in eps]
    for k in ds.columns:
        np.testing.assert_array_equal(ds.columns[k], np.concatenate([e[k] for e in eps]))
        assert ds.columns[k].flags.c_contiguous
    for i, e in enumerate(eps):
        np.testing.assert_array_equal(ds.episode(i)["pixels"], e["pixels"])
    dtypes = {"pixels": np.uint8, "action": np.float32, "state": np.float64, "proprio": np.float32}
    assert all(ds.columns[k].dtype == dtypes[k] for k in ds.columns)


def test_round_trip_staged_and_packed_shards(tmp_path):
    d, eps, staged = _make_dir(tmp_path)
    cols = ("pixels", "action", "state", "proprio")
    _assert_matches(D.load_dataset(d, columns=cols), eps)             # staged only
    D.pack_shard(d, staged[4:], ATTRS)                                 # packed out of order
    _assert_matches(D.load_dataset(d, columns=cols), eps)             # shard + staged
    D.pack_shard(d, staged[:4], ATTRS)
    assert sorted(p.name for p in d.glob("shard_*.h5")) == ["shard_00000.h5", "shard_00004.h5"]
    assert not list((d / D.STAGING).iterdir())
    ds = D.load_dataset(d, columns=cols)
    _assert_matches(ds, eps)
    np.testing.assert_array_equal(ds.ep_offset, np.cumsum([0] + [len(e["pixels"]) for e in eps[:-1]]))
    with h5py.File(d / "shard_00000.h5") as f:                         # LeWM column layout
        assert set(f) == {"pixels", "action", "state", "proprio", "ep_len", "ep_offset", "ep_seed", "ep_index"}


def test_episode_selection_and_missing_columns(tmp_path):
    d, eps, staged = _make_dir(tmp_path)
    D.pack_shard(d, staged, ATTRS)
    ds = D.load_dataset(d, columns=("pixels", "action"), episodes=[5, 1])
    _assert_matches(ds, [eps[5], eps[1]])
    assert D.load_dataset(d, columns=("action",), episodes=3).ep_index.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="columns=.*'state'"):
        ds.state                                                       # noqa: B018
    with pytest.raises(ValueError, match="out of range"):
        D.load_dataset(d, episodes=[99])


def test_every_crash_window_reads_once_and_recovers(tmp_path):
    """Simulate each moment a kill can hit: torn temporaries, packed-but-not-yet-deleted staged files."""
    d, eps, staged = _make_dir(tmp_path)
    (d / D.STAGING / "ep_00009.npz.tmp").write_bytes(b"torn episode")          # died while staging
    (d / "shard_00005.h5.tmp").write_bytes(b"\x89HDF torn shard")             # died while packing
    copies = [p.read_bytes() for p in staged[:3]]
    D.pack_shard(d, staged[:3], ATTRS)
    for p, b in zip(staged[:3], copies):                                       # died before deleting
        p.write_bytes(b)
    _assert_matches(D.load_dataset(d, columns=("pixels", "state")), eps)      # no duplicates, no torn data
    assert D.committed_indices(d) == set(range(7))
    assert D.recover(d, range(0, 10), ATTRS) == 4                              # packs eps 3..6
    assert sorted(p.name for p in d.rglob("*") if p.is_file()) == ["meta.json", "shard_00000.h5", "shard_00003.h5"]
    _assert_matches(D.load_dataset(d, columns=("pixels", "action", "state", "proprio")), eps)


def test_lewm_single_file_loads(tmp_path):
    """A stable-worldmodel style .h5: pixels/action/ep_len/ep_offset only, plus extra columns."""
    rng = np.random.default_rng(1)
    lens = np.array([5, 3, 6])
    n = int(lens.sum())
    pixels = rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    action = rng.normal(size=(n, 2)).astype(np.float32)
    path = tmp_path / "pusht_expert.h5"
    with h5py.File(path, "w") as f:
        f["pixels"], f["action"] = pixels, action
        f["reward"], f["terminated"] = np.zeros(n), np.zeros(n, bool)
        f["ep_len"], f["ep_offset"] = lens, np.concatenate([[0], np.cumsum(lens)[:-1]])
    ds = D.load_dataset(path, columns=("pixels", "action", "state"))
    assert ds.num_episodes == 3 and ds.num_frames == n and ds.ep_seed is None
    np.testing.assert_array_equal(ds.pixels, pixels)
    np.testing.assert_array_equal(ds.action, action)
    np.testing.assert_array_equal(ds.episode(2)["action"], action[8:])
    assert ds.meta["format"] == "external-hdf5"
    with pytest.raises(ValueError, match="'state' is not in this dataset"):
        ds.state                                                       # noqa: B018
    chw = tmp_path / "chw.h5"                                          # (N, C, H, W) pixels
    with h5py.File(chw, "w") as f:
        f["pixels"], f["action"] = pixels.transpose(0, 3, 1, 2), action
        f["ep_len"], f["ep_offset"] = lens, np.concatenate([[0], np.cumsum(lens)[:-1]])
    np.testing.assert_array_equal(D.load_dataset(chw, columns=("pixels",)).pixels, pixels)


def test_bad_paths_are_refused_with_a_fix(tmp_path):
    with pytest.raises(ValueError, match="does not exist.*wm collect"):
        D.load_dataset(tmp_path / "nope")
    with pytest.raises(ValueError, match="no meta.json and no shard"):
        D.load_dataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a wm dataset"):
        D.load_dataset(tmp_path)
    bad = tmp_path / "corrupt.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5.*pass data= a `wm collect` directory"):
        D.load_dataset(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["images"] = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="no 'ep_len'"):
        D.load_dataset(other)


def test_shards_from_another_collection_are_refused(tmp_path):
    d, eps, staged = _make_dir(tmp_path)
    D.pack_shard(d, staged[:3], {"format": D.FORMAT, "key": {"env": "other", "seed": 5}})
    with pytest.raises(ValueError, match="different config"):
        D.load_dataset(d)
