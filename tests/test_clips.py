"""Clip indexing, batched gather, episode split, action statistics and the resumable sampler."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from worldmodel.data.clips import ClipDataset, ClipLoader, ClipSampler, ClipSpec, split_episodes


def write_dataset(root: Path, ep_lens: list[int], action_dim: int = 2, image_size: int = 8,
                  shards: int = 1, seed: int = 0) -> Path:
    """A dataset in the wm-hdf5-v1 layout whose pixels/actions encode their global row.

    pixels[r] = (r % 256, r // 256, episode) in every pixel; action[r] = (r, -r, ...) except the
    NaN last row of each episode. Shards split the episodes round-robin-free (consecutive).
    """
    root.mkdir(parents=True, exist_ok=True)
    groups = np.array_split(np.arange(len(ep_lens)), shards)
    row0, h = 0, image_size
    for i, eps in enumerate(groups):
        lens = np.array([ep_lens[e] for e in eps], dtype=np.int64)
        n = int(lens.sum())
        rows = row0 + np.arange(n)
        ep_of_row = np.repeat(eps, lens)
        pixels = np.zeros((n, h, h, 3), np.uint8)
        pixels[..., 0] = (rows % 256)[:, None, None]
        pixels[..., 1] = (rows // 256)[:, None, None]
        pixels[..., 2] = ep_of_row[:, None, None]
        action = np.stack([rows * (1.0 if k % 2 == 0 else -1.0) for k in range(action_dim)], 1)
        action = action.astype(np.float32)
        offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        action[offs + lens - 1] = np.nan
        with h5py.File(root / f"shard_{i:05d}.h5", "w") as f:
            f["pixels"] = pixels
            f["action"] = action
            f["state"] = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
            f["proprio"] = np.zeros((n, 2), np.float32)
            f["ep_len"] = lens
            f["ep_offset"] = offs
            f["ep_seed"] = eps.astype(np.int64) + seed
            f["ep_index"] = eps.astype(np.int64)
        row0 += n
    meta = {"format": "wm-hdf5-v1", "env": "synthetic", "env_id": "wm/Synthetic-v0",
            "image_size": image_size, "action_dim": action_dim,
            "action_low": [-1e9] * action_dim, "action_high": [1e9] * action_dim,
            "control_hz": 10.0, "frameskip": 1, "policy": "synthetic", "seed": seed,
            "episodes": len(ep_lens), "episode_len": max(ep_lens), "num_shards": shards,
            "state_names": ["a", "b", "c", "d"], "proprio_names": ["p", "q"], "env_info": {},
            "versions": {}, "command": []}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


def load(path: Path):
    from worldmodel.data.dataset import load_dataset

    return load_dataset(path, columns=("pixels", "action"))


@pytest.fixture
def ds(tmp_path):
    return load(write_dataset(tmp_path / "d", [20, 7, 16, 3, 30], shards=2))


SPEC = ClipSpec(history=3, n_preds=1, frameskip=5)        # 4 frames, span 15 rows


def test_starts_stay_inside_episodes_and_skip_nan(ds):
    clips = ClipDataset(ds, SPEC)
    # episodes of 20, 7, 16, 3, 30 rows: 5 + 0 + 1 + 0 + 15 starts
    assert len(clips) == 21
    pixels, actions = clips.get_batch(np.arange(len(clips)))
    assert pixels.shape == (21, 4, 8, 8, 3) and pixels.dtype == torch.uint8
    assert actions.shape == (21, 3, 10) and actions.dtype == torch.float32
    assert torch.isfinite(actions).all()
    ep = pixels[..., 0, 0, 2]                                          # (B, T) episode id
    assert (ep == ep[:, :1]).all(), "a clip crossed an episode boundary"


def test_gather_layout_matches_rows(ds):
    clips = ClipDataset(ds, SPEC)
    s = int(clips.starts[3])
    pixels, actions = clips.get_batch([3])
    rows = pixels[0, :, 0, 0, 0].long() + 256 * pixels[0, :, 0, 0, 1].long()
    assert rows.tolist() == [s, s + 5, s + 10, s + 15]
    # chunk k = actions of rows s+5k .. s+5k+4, each (r, -r), concatenated
    want = torch.tensor([[v for r in range(s + 5 * k, s + 5 * k + 5) for v in (r, -r)]
                         for k in range(3)], dtype=torch.float32)
    assert torch.equal(actions[0], want)


def test_frame_states_align_with_frames(tmp_path):
    from worldmodel.data.dataset import load_dataset

    path = write_dataset(tmp_path / "d", [20, 7, 16, 3, 30], shards=2)
    clips = ClipDataset(load_dataset(path, columns=("pixels", "action", "state")), SPEC)
    full = load_dataset(path, columns=("state",)).state                # (N, 4)
    s = int(clips.starts[3])
    np.testing.assert_array_equal(clips.frame_states([3])[0], full[[s, s + 5, s + 10, s + 15]])
    assert ClipDataset(load(path), SPEC).frame_states([0]) is None      # no state loaded: no probe


def test_pose_features_drop_velocities_and_unwrap_angles():
    from worldmodel.data.clips import pose_features

    state = np.array([[0.5, -0.2, 2 * np.pi + 0.3, 9.0], [0.1, 0.0, -np.pi, -9.0]])    # x, y, theta, v
    meta = {"env_info": {"pose_dims": [0, 1, 2], "angle_dims": [2]}}
    want = np.array([[0.5, -0.2, np.sin(0.3), np.cos(0.3)], [0.1, 0.0, 0.0, -1.0]])
    np.testing.assert_allclose(pose_features(state, meta), want, atol=1e-12)
    assert pose_features(state, {"format": "external-hdf5"}) is state         # no record: as is
    with pytest.raises(ValueError, match="outside the 4 state columns"):
        pose_features(state, {"env_info": {"pose_dims": [0, 4]}})


def test_nan_in_episode_middle_excludes_clips(tmp_path):
    root = write_dataset(tmp_path / "d", [40])
    with h5py.File(root / "shard_00000.h5", "r+") as f:
        a = f["action"][...]
        a[20] = np.nan
        f["action"][...] = a
    clips = ClipDataset(load(root), SPEC)
    _, actions = clips.get_batch(np.arange(len(clips)))
    assert torch.isfinite(actions).all()
    assert len(clips) == 25 - 15          # starts 5..19 cover row 20 in their action window


def test_split_by_episode_is_seeded_and_disjoint(ds):
    tr, va = split_episodes(ds.ep_len, SPEC, val_fraction=0.34, seed=3)
    tr2, va2 = split_episodes(ds.ep_len, SPEC, val_fraction=0.34, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert set(tr) | set(va) == {0, 2, 4} and not set(tr) & set(va)   # only usable episodes
    assert len(va) == 1
    rows_tr = ClipDataset(ds, SPEC, tr).starts
    rows_va = ClipDataset(ds, SPEC, va).starts
    assert not set(rows_tr.tolist()) & set(rows_va.tolist())
    with pytest.raises(ValueError, match="longer episodes"):
        split_episodes(ds.ep_len, ClipSpec(3, 1, 20), 0.1, 0)


def test_action_stats_from_training_rows(ds):
    clips = ClipDataset(ds, SPEC, episodes=np.array([0]))           # rows 0..18 have actions
    mean, std = clips.action_stats()
    assert mean.shape == (10,) and std.shape == (10,)
    r = np.arange(19.0)
    assert np.allclose(mean[:2].numpy(), [r.mean(), -r.mean()], atol=1e-5)
    assert np.allclose(std[:2].numpy(), [r.std(), r.std()], atol=1e-4)
    assert torch.equal(mean[2:4], mean[:2])                          # tiled per action in the chunk


def test_sampler_epochs_resume_and_shards():
    s = ClipSampler(10, batch_size=4, seed=1)
    draws = [s.next_indices() for _ in range(5)]                     # 20 indices = 2 epochs
    flat = torch.cat(draws)
    assert sorted(flat[:10].tolist()) == list(range(10)) == sorted(flat[10:].tolist())
    r = ClipSampler(10, batch_size=4, seed=1)
    [r.next_indices() for _ in range(2)]
    state = r.state_dict()
    r2 = ClipSampler(10, batch_size=4, seed=1)
    r2.load_state_dict(state)
    assert all(torch.equal(r2.next_indices(), d) for d in draws[2:])
    a = ClipSampler(11, batch_size=5, seed=2, rank=0, world_size=2)
    b = ClipSampler(11, batch_size=5, seed=2, rank=1, world_size=2)
    ia, ib = a.next_indices(), b.next_indices()
    assert not set(ia.tolist()) & set(ib.tolist()) and len(ia) == len(ib) == 5
    with pytest.raises(ValueError, match="same dataset"):
        ClipSampler(12, batch_size=4, seed=1).load_state_dict(state)


def test_loader_prefetch_matches_direct_and_reports_consumed_state(ds):
    clips = ClipDataset(ds, SPEC)
    direct = ClipLoader(clips, ClipSampler(len(clips), 8, seed=0), prefetch=0)
    ahead = ClipLoader(clips, ClipSampler(len(clips), 8, seed=0), prefetch=3)
    for _ in range(4):
        (p0, a0), (p1, a1) = next(direct), next(ahead)
        assert torch.equal(p0, p1) and torch.equal(a0, a1)
    assert ahead.state_dict() == direct.state_dict()                 # not the prefetched cursor
    ahead.close()
