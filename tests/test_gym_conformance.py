"""Every registered env is a conforming gymnasium env: string entry points whose spec round-trips
through JSON, a default episode length (the env preset's), goal info at every step, gymnasium's own
env checker, and a headless render with no MUJOCO_GL set."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

from test_readme import CHECKPOINT, _python_blocks, tiny_checkpoint  # noqa: F401 (a fixture)
from worldmodel import envs
from worldmodel.envs.registry import ENVS, IDS

REPO = Path(__file__).resolve().parent.parent
BUILTIN = {"wm/TwoRoom-v0", "wm/PushT-v0", "wm/Reacher-v0", "wm/Gym-v0", "wm/DMC-v0"}


def test_every_builtin_env_is_registered():
    assert BUILTIN <= set(IDS)


@pytest.mark.parametrize("gym_id", sorted(BUILTIN))
def test_spec_round_trips_and_env_passes_gymnasiums_checker(gym_id):
    env = gym.make(gym_id, image_size=16)
    spec = env.spec
    assert isinstance(spec.entry_point, str) and ":" in spec.entry_point      # "module:Class"
    preset = yaml.safe_load((REPO / "configs" / "env" / f"{IDS[gym_id]}.yaml").read_text())
    assert spec.max_episode_steps == preset["episode_len"]                    # one episode length
    again = gym.make(EnvSpec.from_json(spec.to_json()))
    assert type(again.unwrapped) is ENVS[IDS[gym_id]] and again.unwrapped.image_size == 16
    assert again.spec.max_episode_steps == spec.max_episode_steps
    again.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a checker warning fails the test
        check_env(env.unwrapped)

    obs, info = env.reset(seed=3)
    assert {"state", "proprio", "goal_error", "is_success"} <= set(info)
    goal = env.unwrapped.goal_state
    assert info["goal_error"] == env.unwrapped.goal_error(info["state"], goal)
    assert info["is_success"] == (info["goal_error"] < 1)
    obs, _, _, _, info = env.step(env.action_space.sample())
    assert {"goal_error", "is_success"} <= set(info)
    # the goal comes from its own generator: the seeded start is the same with or without it
    _, given = env.reset(seed=3, options={"goal_state": info["state"]})
    np.testing.assert_array_equal(env.unwrapped.goal_state, info["state"])
    np.testing.assert_array_equal(given["state"], env.reset(seed=3)[1]["state"])
    with pytest.raises(ValueError, match="must be a state of shape"):
        env.reset(options={"goal_state": [0.0]})
    env.close()


def test_a_goal_at_the_current_state_is_success_and_time_limit_truncates():
    env = gym.make("wm/TwoRoom-v0", image_size=16, max_episode_steps=3)
    _, info = env.reset(seed=0)
    _, info = env.reset(seed=0, options={"goal_state": info["state"]})
    assert info["is_success"] and info["goal_error"] == 0.0
    truncated = [env.step(np.zeros(2, np.float32))[3] for _ in range(3)]
    assert truncated == [False, False, True]
    env.close()


def test_headless_readme_example_needs_no_environment_variable(tiny_checkpoint, tmp_path):
    """The README's Python API example, then gym.make through the "module:id" entry point, in a fresh
    process with no MUJOCO_GL and no display: mujoco reads MUJOCO_GL once, at its first import, so
    importing worldmodel.envs must pick the backend before that."""
    (block,) = [b for b in _python_blocks() if "MPCController" in b]
    code = (block.replace(CHECKPOINT, repr(str(tiny_checkpoint)))
            .replace('make_planner("cem", seed=0)', 'make_planner("cem", seed=0, samples=32, iterations=1)')
            + "import gymnasium as gym\n"
              "env2 = gym.make('worldmodel.envs:wm/PushT-v0', image_size=16)\n"
              "obs2, _ = env2.reset(seed=0)\n"
              "print('frames', obs.shape, obs2.shape, obs.std() > 0)\n")
    (tmp_path / "example.py").write_text(code)
    clean = {k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "DISPLAY",
                                                              "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, env=clean, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "frames (32, 32, 3) (16, 16, 3) True"


def test_a_class_no_import_path_names_is_registered_as_itself():
    from worldmodel.envs import register_env
    from worldmodel.envs.tworoom import TwoRoom

    try:
        @register_env("local_tworoom", "wm/LocalTwoRoom-v0", max_episode_steps=7)
        class Local(TwoRoom):
            pass

        spec = gym.spec("wm/LocalTwoRoom-v0")
        assert spec.entry_point is Local and spec.max_episode_steps == 7
        assert envs.make("wm/LocalTwoRoom-v0", image_size=16).image_size == 16
    finally:
        ENVS.pop("local_tworoom", None)
        IDS.pop("wm/LocalTwoRoom-v0", None)
        gym.registry.pop("wm/LocalTwoRoom-v0", None)
