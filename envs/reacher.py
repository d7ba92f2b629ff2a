"""Reacher: the dm_control suite two-link planar arm, with joint-configuration goals.

The physics is dm_control's own `reacher` model and `Physics` (torque motors, 0.02 s timestep,
one physics step per env step = 50 Hz, as the suite runs it). Rendering uses the suite's "fixed"
top-down camera (lowered to 0.6 m) through the shared fast renderer, for observations and goal images alike. The
suite's target sphere is hidden: here the goal is an arm configuration shown as a goal image.

- Action (2,) in [-1, 1]: shoulder and wrist motor commands (the suite's bounds).
- State (4,) = qpos + qvel = (shoulder, wrist, shoulder_vel, wrist_vel), radians and rad/s.
  The shoulder is unlimited (angles are wrapped when scored); the wrist is limited to +-160 deg.
- Success: every joint within 0.05 rad of the goal (wrapped), LeWM's criterion.
"""
from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from worldmodel.envs.base import EnvInfo, MujocoGoalEnv, step_dm_physics, wrap_angle
from worldmodel.envs.registry import register_env
from worldmodel.envs.render import FastRenderer

JOINT_TOL = 0.05      # rad
CAMERA_HEIGHT = 0.6   # the suite's "fixed" camera, lowered from 0.75 m so the arm fills the frame


@register_env("reacher", "wm/Reacher-v0")
class Reacher(MujocoGoalEnv):
    """dm_control reacher arm; goal = joint configuration; success = every joint within 0.05 rad."""

    def __init__(self, image_size: int = 64, render_mode: str = "rgb_array"):
        from dm_control.suite import reacher as dmc_reacher   # lazy: importing the suite is slow

        self.physics = dmc_reacher.Physics.from_xml_string(*dmc_reacher.get_model_and_assets())
        self.model: mujoco.MjModel = self.physics.model.ptr
        self.data: mujoco.MjData = self.physics.data.ptr
        target = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, "target")
        self.model.geom_matid[target] = -1
        self.model.geom_rgba[target] = 0.0        # invisible: goals are arm configurations
        cam = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, "fixed")
        self.model.cam_pos[cam, 2] = CAMERA_HEIGHT
        wrist = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, "wrist")
        self.wrist_range = self.model.jnt_range[wrist].copy()
        super().__init__(image_size=image_size, render_mode=render_mode)
        self._renderer = FastRenderer(self.model, image_size, camera="fixed")
        mujoco.mj_forward(self.model, self.data)

    def env_info(self) -> EnvInfo:
        return EnvInfo(
            action_low=np.full(2, -1.0, np.float32),
            action_high=np.full(2, 1.0, np.float32),
            control_hz=1.0 / float(self.model.opt.timestep),
            state_names=("shoulder", "wrist", "shoulder_vel", "wrist_vel"),
            proprio_names=("shoulder", "wrist", "shoulder_vel", "wrist_vel"),
            success=f"every joint within {JOINT_TOL} rad of the goal (wrapped)",
            extra={"source": "dm_control.suite.reacher", "joint_tol_rad": JOINT_TOL,
                   "wrist_range_rad": self.wrist_range.tolist(), "action": "motor commands"},
            pose_dims=(0, 1),
            angle_dims=(0, 1),
        )

    # ---- simulation hooks --------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        mujoco.mj_resetData(self.model, self.data)
        lo, hi = self.wrist_range
        self.data.qpos[:] = (rng.uniform(-np.pi, np.pi), rng.uniform(lo, hi))
        mujoco.mj_forward(self.model, self.data)

    def _step_sim(self, action: np.ndarray) -> None:
        self.physics.set_control(action.astype(np.float64))
        step_dm_physics(self.physics, 1, "reacher")

    def get_proprio(self) -> np.ndarray:
        return self.get_state().astype(np.float32)

    goal_error_names = ("shoulder", "elbow")

    def goal_errors(self, state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
        """(shoulder, elbow) angle errors over the tolerance, (2,)."""
        return np.abs(wrap_angle(np.asarray(state)[:2] - np.asarray(goal_state)[:2])) / JOINT_TOL

    def goal_error(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        return float(self.goal_errors(state, goal_state).max())

    def episode_metrics(self, states: np.ndarray) -> dict[str, float]:
        """shoulder_range: radians swept by the shoulder (unwrapped) over the episode (T, 4)."""
        sh = np.unwrap(np.asarray(states)[:, 0])
        return {"shoulder_range": float(sh.max() - sh.min())}
