"""Minari datasets in and out, through the `minari` package: `wm import minari PATH_OR_ID out=DATA`
and `wm export minari DATA out=PATH`.

Import takes frames from an image observation (a (H, W, 3) uint8 Box, or such a key of a Dict
space, chosen by `camera=`), else renders them: a MuJoCo dataset (state observations, e.g. one
recorded with Minari's DataCollector on `Hopper-v5`) is replayed in the toolkit's adapter of its
env from each episode's recorded seed, every replayed observation checked against the recorded
one, so the rendered frames and the state (qpos, qvel) are the ones the data was recorded from and
the dataset names its env (`wm eval` rebuilds it). Export writes `{pixels, state}` Dict
observations (lossless), the actions and their bounds, the gymnasium env spec when the env is one.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.data.lerobot import action_bounds


def _minari():
    try:
        import minari
    except ImportError:
        raise ValueError("Minari datasets need the minari package: pip install minari") from None
    return minari


def open_minari(source: str | Path) -> Any:
    """A MinariDataset from a directory (the dataset's or its data/) or a local dataset id."""
    minari = _minari()
    p = Path(source)
    for d in (p / "data", p):
        if (d / "metadata.json").is_file():
            return minari.MinariDataset(d)
    try:
        return minari.load_dataset(str(source), download=False)
    except Exception as e:  # noqa: BLE001 - minari raises plain errors for unknown ids
        raise ValueError(f"{source} is neither a Minari dataset directory nor a local dataset id ({e}); "
                         f"download it first (minari download {source})") from None


def _image_key(space: Any, camera: str | None) -> str | None:
    """'' for an image Box observation, the Dict key of an image subspace, None when there is none."""
    import gymnasium as gym

    def is_image(s: Any) -> bool:
        return isinstance(s, gym.spaces.Box) and s.dtype == np.uint8 and len(s.shape) == 3 and s.shape[2] == 3

    if isinstance(space, gym.spaces.Dict):
        keys = [k for k, s in space.spaces.items() if is_image(s)]
        if camera is not None and camera not in keys:
            raise ValueError(f"camera={camera!r} is not an image observation of this dataset; choose one of {keys}")
        return camera or (keys[0] if keys else None)
    if camera:
        raise ValueError(f"camera={camera!r}: this dataset's observations are one {space}, not a Dict")
    return "" if is_image(space) else None


def _state_of(obs: Any, key: str | None) -> np.ndarray | None:
    if isinstance(obs, dict):
        x = obs.get("state")
        return None if x is None else np.asarray(x, np.float64).reshape(len(x), -1)
    return np.asarray(obs, np.float64).reshape(len(obs), -1) if key is None else None


def check_minari(ds: Any, camera: str | None) -> dict[str, Any]:
    """Everything the import needs, checked before any work: Box actions, equal lengths, finite
    actions inside the action space, a source of frames. Returns the plan."""
    import gymnasium as gym

    space = ds.action_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"Minari action space {space} is not a 1-d Box; the world model takes continuous actions")
    key = _image_key(ds.observation_space, camera)
    spec = ds.env_spec
    if key is None and spec is None:
        raise ValueError("this Minari dataset has no image observation and no env spec to render frames from; "
                         "record it with an image observation (or with its env's spec)")
    lo, hi = np.full(space.shape, np.inf), np.full(space.shape, -np.inf)
    seeds = [m.get("seed") for m in ds.storage.get_episode_metadata(ds.episode_indices)]
    for ep, seed in zip(ds.iterate_episodes(), seeds):
        a = np.asarray(ep.actions, np.float64)
        first = next(iter(ep.observations.values())) if isinstance(ep.observations, dict) else ep.observations
        if len(first) != len(a) + 1:
            raise ValueError(f"Minari episode {ep.id}: {len(first)} observations for {len(a)} actions (expected "
                             f"{len(a) + 1}); the dataset is damaged")
        if not np.isfinite(a).all():
            raise ValueError(f"Minari episode {ep.id} has NaN/Inf actions; drop it (minari's filter_episodes) and import")
        if key is None and seed is None:
            raise ValueError(f"Minari episode {ep.id} records no seed: its frames cannot be rendered by replay "
                             "(collect with DataCollector and reset(seed=...), or record image observations)")
        lo, hi = np.minimum(lo, a.min(0)), np.maximum(hi, a.max(0))
    tol = 1e-6 * np.maximum(space.high - space.low, 1.0)
    if (lo < space.low - tol).any() or (hi > space.high + tol).any():
        raise ValueError(f"Minari actions range {lo.tolist()} .. {hi.tolist()}, outside the action space {space}; "
                         "drop those episodes or fix the space")
    return {"key": key, "env": None if key is not None else spec.id, "low": lo, "high": hi, "seeds": seeds}


def _replay(env: Any, ep: Any, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames and states of one recorded episode, replayed from its seed; refuses a replay whose
    observations leave the recorded ones (another simulator version, a stochastic env)."""
    obs = np.asarray(ep.observations, np.float64)
    if env.goal_state is None:
        env.reset(seed=0)                     # the adapter's own reset: a goal for its step info
    env.env.reset(seed=int(seed))             # the recording's reset of the gymnasium env
    frames, states = [env.render()], [env.get_state()]
    for t, a in enumerate(np.asarray(ep.actions)):
        got = np.asarray(env.env._get_obs(), np.float64)
        if np.abs(got - obs[t]).max() > 1e-4 * (1 + np.abs(obs[t]).max()):
            raise ValueError(f"replaying Minari episode {ep.id} from its seed leaves the recorded observations at step "
                             f"{t}; record image observations, or replay with the recording's gymnasium/mujoco versions")
        env.step(a)
        frames.append(env.render())
        states.append(env.get_state())
    return np.stack(frames), np.stack(states)


def iter_minari(ds: Any, plan: dict[str, Any], image_size: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Episodes from position `start`: frames fitted to image_size, T - 1 actions, the state."""
    from worldmodel.report.video import fit_frame

    env = None
    if plan["env"] is not None:
        from worldmodel import envs

        env = envs.make(plan["env"], image_size=image_size)
    try:
        for i, ep in enumerate(ds.iterate_episodes(ds.episode_indices[start:])):
            if env is not None:
                pixels, state = _replay(env, ep, plan["seeds"][start + i])
            else:
                obs = ep.observations
                raw = obs[plan["key"]] if plan["key"] else obs
                pixels = np.stack([fit_frame(np.asarray(f), image_size) for f in raw])
                state = _state_of(obs, plan["key"])
            yield {"pixels": pixels, "action": np.asarray(ep.actions, np.float32), "state": state}
    finally:
        if env is not None:
            env.close()


def _toolkit_env(spec: Any, plan: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The env a dataset's frames come from, as `envs.make` takes it: the replayed gymnasium env, or
    a toolkit env (its wm/... id) whose own frames were recorded; (None, {}) for any other source."""
    if plan["env"] is not None:
        return plan["env"], {}
    if spec is None:
        return None, {}
    from worldmodel.envs import registry

    name = getattr(registry, "IDS", {}).get(spec.id)
    return (name, {k: v for k, v in spec.kwargs.items() if k != "image_size"}) if name else (None, {})


def import_minari(source: str | Path, out: str | Path, *, camera: str | None = None, image_size: int = 64,
                  action_low: Any = None, action_high: Any = None, control_hz: float | None = None,
                  resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Import a Minari dataset into a wm dataset at `out` (crash-safe, `resume=True` continues).
    The control rate: `control_hz`, else the one a `wm export minari` recorded, else the env spec's."""
    from tqdm import tqdm

    from worldmodel.data.dataset import committed_indices
    from worldmodel.data.recorder import DatasetWriter

    ds = open_minari(source)
    plan = check_minari(ds, camera)
    if action_low is None and plan["env"] is not None:          # a simulator's own bounds
        action_low, action_high = ds.action_space.low.tolist(), ds.action_space.high.tolist()
    low, high = action_bounds(plan["low"], plan["high"], action_low, action_high, f"Minari {ds.spec.dataset_id}")
    hz = control_hz or ds.storage.metadata.get("wm_control_hz")
    if not hz and ds.env_spec is not None:
        try:
            env = ds.recover_environment().unwrapped
            hz = env.env_info().control_hz if hasattr(env, "env_info") else 1.0 / float(env.dt)  # a toolkit env, or MuJoCo's
            env.close()
        except Exception:  # noqa: BLE001 - an env that cannot be built here, or one without a rate
            hz = None
    if not hz:
        raise ValueError("this Minari dataset records no control rate (no env spec with a dt); pass control_hz=<Hz>")
    env_name, env_kwargs = _toolkit_env(ds.env_spec, plan)
    info = None
    if env_name is not None:
        from worldmodel import envs

        probe = envs.make(env_name, image_size=image_size, **env_kwargs)
        info = probe.env_info()
        probe.close()
    writer = DatasetWriter(out, action_low=low, action_high=high, control_hz=hz, image_size=image_size,
                           name=f"minari:{ds.spec.dataset_id}", resume=resume, overwrite=overwrite,
                           state_names=list(info.state_names) if info else None,
                           pose_dims=(info.pose_dims if info.pose_dims is not None else range(len(info.state_names)))
                           if info else None, angle_dims=info.angle_dims if info else ())
    if info is not None:                       # `wm eval` / `wm inspect` rebuild the env
        writer.meta.update(env=env_name, env_kwargs=env_kwargs, env_info=info.to_json())
    writer.meta["imported"] = {"format": "minari", "dataset_id": ds.spec.dataset_id, "path": str(source),
                               "camera": plan["key"] or None, "rendered": plan["env"] is not None}
    start = max(committed_indices(out), default=-1) + 1
    bar = tqdm(total=len(ds), initial=start, unit="episode", desc=f"import {ds.spec.dataset_id}", disable=not progress)
    with writer, bar:
        for ep in iter_minari(ds, plan, image_size, start):
            writer.add_episode(pixels=ep["pixels"], action=ep["action"], state=ep["state"])
            bar.update(1)
    return {"out": str(out), "episodes": len(ds), "frames": int(ds.total_steps) + len(ds),
            "rendered": plan["env"] is not None, "control_hz": hz}


def _env_spec(meta: dict[str, Any]) -> Any:
    """The gymnasium spec that rebuilds a dataset's env (a gymnasium id, or a toolkit env's wm/... id,
    with the image size and constructor kwargs it was collected with); None for recorded data."""
    import dataclasses

    import gymnasium as gym

    env = meta.get("env")
    if not env:
        return None
    from worldmodel.envs import registry

    ids = getattr(registry, "IDS", {})                      # the toolkit's wm/... ids -> short names
    gym_id = env if env in gym.registry else next((k for k, v in ids.items() if v == env), None)
    if gym_id is None:
        return None
    spec = gym.spec(gym_id)
    if gym_id not in ids:                                     # a gymnasium env: its own kwargs
        return spec
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "image_size": int(meta["image_size"]),
                                             **meta.get("env_kwargs", {})})


def export_minari(data: str | Path, out: str | Path | None = None, *, dataset_id: str | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the wm dataset `data` as a Minari dataset (HDF5, lossless) at `out` (default: Minari's
    own dataset folder for `dataset_id`, so `minari.load_dataset(dataset_id)` finds it). Written in
    `.<name>.partial` beside `out` and renamed when complete."""
    import gymnasium as gym
    from tqdm import tqdm

    from worldmodel.data.dataset import load_dataset
    from worldmodel.data.lerobot_export import checked_dataset

    minari = _minari()
    from minari.data_collector import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage
    from minari.storage.datasets_root_dir import get_dataset_path

    data = Path(data)
    ds = checked_dataset(data, "Minari")
    meta = ds.meta
    dataset_id = dataset_id or f"wm/{data.resolve().name}-v0"
    out = Path(out) if out else get_dataset_path(dataset_id)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=true to replace it, or another path")
    part = out.with_name(f".{out.name}.partial")
    shutil.rmtree(part, ignore_errors=True)          # a killed export's leftovers: nothing to keep
    n = int(meta["image_size"])
    spaces = {"pixels": gym.spaces.Box(0, 255, (n, n, 3), np.uint8)}
    first = load_dataset(data, columns=("state",), episodes=[0])
    if "state" in first.columns:
        spaces["state"] = gym.spaces.Box(-np.inf, np.inf, first.state.shape[1:], np.float64)
    spec = _env_spec(meta)
    env = meta.get("env")
    part.mkdir(parents=True)
    storage = MinariStorage.new(part / "data", observation_space=gym.spaces.Dict(spaces),
                                action_space=gym.spaces.Box(np.asarray(meta["action_low"], np.float32),
                                                            np.asarray(meta["action_high"], np.float32)),
                                env_spec=spec, jpeg_encoding=False)
    storage.update_metadata({"dataset_id": dataset_id, "minari_version": minari.__version__,
                             "algorithm_name": str(meta.get("policy") or "recorded"),
                             "wm_control_hz": float(meta["control_hz"]),
                             "description": f"exported from wm dataset {data} (env {env or meta.get('source')}, "
                                            f"{meta.get('control_hz')} Hz)"})
    with tqdm(total=ds.num_episodes, unit="episode", desc=f"export {data.name}", disable=not progress) as bar:
        for e in range(ds.num_episodes):
            ep = load_dataset(data, columns=("pixels", "action", "state"), episodes=[e])
            T = ep.num_frames
            obs = {"pixels": ep.pixels, **({"state": ep.state} if "state" in spaces else {})}
            storage.update_episodes([EpisodeBuffer(id=e, observations=obs, actions=ep.action[:T - 1],
                                                   rewards=np.zeros(T - 1), terminations=np.zeros(T - 1, bool),
                                                   truncations=np.arange(T - 1) == T - 2)])
            bar.update(1)
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, out)
    return {"out": str(out), "dataset_id": dataset_id, "episodes": ds.num_episodes, "env_spec": spec.id if spec else None}
