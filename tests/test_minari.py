"""Minari datasets in and out: a MuJoCo dataset of state observations (as Minari's DataCollector
records it: seeded resets, the env spec) imports with frames rendered by replay and trains; a wm
dataset exports, loads with minari and imports back unchanged; bad input is refused before work."""
from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")
from minari.data_collector import EpisodeBuffer

from worldmodel.cli import main
from worldmodel.data.dataset import load_dataset
from worldmodel.data.minari import export_minari, import_minari

ENV = "InvertedPendulum-v5"


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    warnings.filterwarnings("ignore", module="minari")


def pendulum_episodes(n: int = 3, T: int = 8, seed_base: int = 100) -> list[EpisodeBuffer]:
    """What DataCollector records on InvertedPendulum-v5 with reset(seed=...): state observations."""
    env, out = gym.make(ENV), []
    rng = np.random.default_rng(0)
    for s in range(n):
        o, _ = env.reset(seed=seed_base + s)
        obs, acts = [o], []
        for _ in range(T):
            a = rng.uniform(-1, 1, 1).astype(np.float32)
            obs.append(env.step(a)[0])
            acts.append(a)
        out.append(EpisodeBuffer(id=s, seed=seed_base + s, observations=np.array(obs), actions=np.array(acts),
                                 rewards=np.zeros(T), terminations=np.zeros(T, bool), truncations=np.arange(T) == T - 1))
    return out


def test_a_mujoco_minari_dataset_imports_by_replay_and_trains(tmp_path):
    minari.create_dataset_from_buffers("test/pendulum-v0", pendulum_episodes(), env=ENV, algorithm_name="random")
    out = tmp_path / "pend"
    assert main(["import", "minari", "test/pendulum-v0", f"out={out}", "image_size=16", "progress=false"]) == 0
    ds = load_dataset(out, columns=("pixels", "action", "state"))
    assert ds.ep_len.tolist() == [9, 9, 9] and ds.pixels.shape[1:] == (16, 16, 3) and ds.pixels.std() > 1
    meta = ds.meta
    assert meta["env"] == ENV and meta["control_hz"] == 25.0 and meta["imported"]["rendered"]
    rec = minari.load_dataset("test/pendulum-v0")[1]
    np.testing.assert_allclose(ds.episode(1)["state"][:, :2], rec.observations[:, :2], atol=1e-6)   # qpos
    np.testing.assert_array_equal(ds.episode(1)["action"][:-1], rec.actions)
    model = ["model.encoder=vit", "model.image_size=16", "model.patch_size=8", "model.enc_width=32", "model.enc_depth=1",
             "model.enc_heads=2", "model.enc_mlp=64", "model.latent_dim=32", "model.proj_hidden=64",
             "model.frameskip=1", "model.history=2", "model.pred_depth=1", "model.pred_heads=2",
             "model.pred_head_dim=16", "model.pred_mlp=64", "model.action_hidden=32"]
    assert main(["train", f"data={out}", f"out={tmp_path / 'run'}", *model, "steps=2", "batch_size=4",
                 "data.val_fraction=0.34", "eval_every=2", "tensorboard=false", "plots=false", "progress=false"]) == 0
    assert (tmp_path / "run" / "best.pt").exists()


def test_export_loads_in_minari_and_imports_back_unchanged(tmp_path):
    minari.create_dataset_from_buffers("test/pendulum-v0", pendulum_episodes(), env=ENV, algorithm_name="random")
    src = tmp_path / "pend"
    import_minari("test/pendulum-v0", src, image_size=16, progress=False)
    assert main(["export", "minari", str(src), "dataset_id=wm/pend-v0", "progress=false"]) == 0
    m = minari.load_dataset("wm/pend-v0")
    assert len(m) == 3 and m.env_spec.id == ENV and m[0].observations["pixels"].shape == (9, 16, 16, 3)
    back = tmp_path / "back"
    import_minari("wm/pend-v0", back, image_size=16, progress=False)
    a, b = (load_dataset(p, columns=("pixels", "action", "state")) for p in (src, back))
    np.testing.assert_array_equal(b.pixels, a.pixels)
    np.testing.assert_array_equal(b.state, a.state)
    np.testing.assert_array_equal(b.action[:-1], a.action[:-1])
    assert b.meta["control_hz"] == a.meta["control_hz"] and b.ep_len.tolist() == a.ep_len.tolist()
    with pytest.raises(FileExistsError, match="overwrite=true"):
        export_minari(src, dataset_id="wm/pend-v0", progress=False)


def _state_dataset(buffers, **kw):
    space = gym.spaces.Box(-np.inf, np.inf, (4,), np.float64)
    return minari.create_dataset_from_buffers("test/bad-v0", buffers, observation_space=space,
                                              action_space=gym.spaces.Box(-3, 3, (1,), np.float32), **kw)


def test_bad_minari_input_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    _state_dataset(pendulum_episodes(1))                                 # no image, no env spec
    with pytest.raises(ValueError, match="no image observation and no env spec"):
        import_minari("test/bad-v0", out, progress=False)
    eps = pendulum_episodes(2)
    eps[1].actions[3] = np.nan
    minari.create_dataset_from_buffers("test/nan-v0", eps, env=ENV)
    with pytest.raises(ValueError, match="NaN"):
        import_minari("test/nan-v0", out, progress=False)
    eps = pendulum_episodes(2)
    eps[0].actions[0] = 5.0                                             # the pendulum's bounds are +-3
    minari.create_dataset_from_buffers("test/oob-v0", eps, env=ENV)
    with pytest.raises(ValueError, match="outside the action space"):
        import_minari("test/oob-v0", out, progress=False)
    eps = pendulum_episodes(1)
    minari.create_dataset_from_buffers("test/noseed-v0", [EpisodeBuffer(
        observations=eps[0].observations, actions=eps[0].actions, rewards=eps[0].rewards,
        terminations=eps[0].terminations, truncations=eps[0].truncations)], env=ENV)
    with pytest.raises(ValueError, match="records no seed"):
        import_minari("test/noseed-v0", out, progress=False)
    with pytest.raises(ValueError, match="minari download"):
        import_minari("test/absent-v0", out, progress=False)
    assert not out.exists()


def test_a_toolkit_env_dataset_round_trips_with_its_env(tmp_path):
    """A `wm collect` dataset exports with its env's gymnasium spec (wm/TwoRoom-v0 at its image size):
    minari's recover_environment rebuilds it, and the import names the env again for `wm eval`."""
    from worldmodel.data import CollectConfig, EnvConfig, collect

    src = tmp_path / "tw"
    collect(CollectConfig(env=EnvConfig(name="tworoom"), episodes=2, episode_len=6, workers=1, image_size=16,
                          out=str(src), progress=False))
    export_minari(src, dataset_id="wm/tw-v0", progress=False)
    m = minari.load_dataset("wm/tw-v0")
    assert m.env_spec.id == "wm/TwoRoom-v0" and m.recover_environment().observation_space.shape == (16, 16, 3)
    import_minari("wm/tw-v0", tmp_path / "back", image_size=16, progress=False)
    a, b = (load_dataset(p, columns=("pixels", "state")) for p in (src, tmp_path / "back"))
    np.testing.assert_array_equal(b.pixels, a.pixels)
    assert b.meta["env"] == "tworoom" and b.meta["env_info"]["pose_dims"] == a.meta["env_info"]["pose_dims"]
