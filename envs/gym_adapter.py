"""Generic adapter: any gymnasium MuJoCo env (Hopper-v5, InvertedPendulum-v5, ...) as a GoalEnv.

    env = envs.make("Hopper-v5")                          # resolved to "gym" with gym_id
    env = envs.make("gym", gym_id="Reacher-v5", success_dims=[0, 1], success_threshold=0.05)

State = (qpos, qvel, act) of the wrapped env's MuJoCo data; one env step is the env's own frame
skip; its reward and termination are ignored. Goals are states, scored by StateGoalEnv.
"""
from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import mujoco
import numpy as np

from worldmodel.envs.base import EnvInfo, StateGoalEnv
from worldmodel.envs.registry import register_env
from worldmodel.envs.render import FastRenderer


def _default_camera(env: Any, model: mujoco.MjModel, data: mujoco.MjData) -> mujoco.MjvCamera:
    """The free (or tracking) camera gymnasium's own renderer would use for `env`."""
    cam = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, cam)
    cam.lookat[:] = np.median(data.geom_xpos, axis=0)
    cam.distance = model.stat.extent
    renderer = getattr(env, "mujoco_renderer", None)
    config = dict(getattr(renderer, "default_cam_config", None) or {})
    for key, value in config.items():
        if isinstance(value, (np.ndarray, list, tuple)):
            getattr(cam, key)[:] = value
        else:
            setattr(cam, key, value)
    if int(config.get("trackbodyid", -1)) >= 0:
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
    return cam


@register_env("gym", "wm/Gym-v0")
class GymMujoco(StateGoalEnv):
    """Wraps a gymnasium MuJoCo env: pixels from its model, state = (qpos, qvel, act)."""

    def __init__(
        self,
        gym_id: str = "Hopper-v5",
        image_size: int = 64,
        render_mode: str = "rgb_array",
        success_dims: Sequence[int] | None = None,
        success_threshold: float = 0.1,
        action_limit: float | None = None,
        camera: str | int | None = None,
        **gym_kwargs: Any,
    ):
        if gym_id not in gym.registry:
            raise ValueError(f"unknown gymnasium id {gym_id!r}; e.g. 'Hopper-v5', "
                             "'InvertedPendulum-v5', 'Reacher-v5' (needs gymnasium[mujoco])")
        self.gym_id = gym_id
        self.env = gym.make(gym_id, **gym_kwargs).unwrapped
        if not (hasattr(self.env, "model") and hasattr(self.env, "data")):
            raise ValueError(f"{gym_id!r} is not a MuJoCo env (no .model/.data); the adapter "
                             "needs gymnasium.envs.mujoco envs")
        self.model: mujoco.MjModel = self.env.model
        self.data: mujoco.MjData = self.env.data
        self._n_sub = int(self.env.frame_skip)     # physics steps per env.step (for sim_rollout)
        self._set_success(success_dims, success_threshold)
        self._set_action_limit(action_limit)
        super().__init__(image_size=image_size, render_mode=render_mode)
        self.env.reset(seed=0)
        cam = _default_camera(self.env, self.model, self.data) if camera is None else camera
        self._renderer = FastRenderer(self.model, image_size, camera=cam)

    def env_info(self) -> EnvInfo:
        space = self.env.action_space
        return self._state_env_info(space.low, space.high, 1.0 / self.env.dt, {"gym_id": self.gym_id})

    # ---- simulation hooks --------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        self.env.reset(seed=int(rng.integers(2**31 - 1)))

    def _step_sim(self, action: np.ndarray) -> None:
        self.env.step(action)
        mujoco.mj_forward(self.model, self.data)   # mj_step leaves xpos one substep stale

    def _write_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.env.set_state(qpos, qvel)

    def close(self) -> None:
        self.env.close()
        super().close()
