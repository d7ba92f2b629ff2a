"""TwoRoom: a point agent in two rooms joined by a door, seen from above (MuJoCo).

The planar navigation task of LeWM / PLDM, rebuilt on MuJoCo so walls are real contacts: an
arena split by a wall at x = 0 with one door, a velocity-driven cylinder agent.

- Action (2,) in [-1, 1]: commanded (vx, vy) / MAX_SPEED. State (4,) = proprio = (x, y, vx, vy).
- Success: agent within `SUCCESS_DIST` of the goal position (LeWM's 16 px of a 224 px frame,
  in metres of the camera's field of view).
"""
from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from worldmodel.envs.base import EnvInfo, MujocoGoalEnv
from worldmodel.envs.registry import register_env
from worldmodel.envs.render import FastRenderer

HALF = 1.0                 # arena interior half-width (m)
WALL = 0.05                # wall half-thickness (m)
FOV = 2.2                  # orthographic camera field of view (m)
AGENT_R = 0.08             # agent radius (m)
DOOR_WIDTH = 0.5           # door opening (m)
DOOR_Y = 0.0               # door centre (m)
MAX_SPEED = 1.0            # m/s at |action| = 1
CONTROL_HZ = 10.0
PHYS_DT = 0.01
SUCCESS_DIST = 16.0 / 224.0 * FOV

_XML = f"""
<mujoco model="tworoom">
  <option timestep="{PHYS_DT}" gravity="0 0 0" integrator="implicitfast"/>
  <visual>
    <global offwidth="64" offheight="64"/>
    <headlight ambient="0.5 0.5 0.5" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <default>
    <geom contype="1" conaffinity="1" friction="0.5 0.005 0.0001" solref="0.005 1"/>
  </default>
  <worldbody>
    <camera name="top" pos="0 0 3" xyaxes="1 0 0 0 1 0" projection="orthographic" fovy="{FOV}"/>
    <geom name="floor" type="box" size="{FOV / 2} {FOV / 2} 0.01" rgba="0.92 0.92 0.88 1"
          contype="0" conaffinity="0"/>
    <geom name="wall_n" type="box" pos="0 {HALF + WALL} 0.1" size="{HALF + 2 * WALL} {WALL} 0.1"
          rgba="0.2 0.2 0.25 1"/>
    <geom name="wall_s" type="box" pos="0 {-HALF - WALL} 0.1" size="{HALF + 2 * WALL} {WALL} 0.1"
          rgba="0.2 0.2 0.25 1"/>
    <geom name="wall_e" type="box" pos="{HALF + WALL} 0 0.1" size="{WALL} {HALF} 0.1"
          rgba="0.2 0.2 0.25 1"/>
    <geom name="wall_w" type="box" pos="{-HALF - WALL} 0 0.1" size="{WALL} {HALF} 0.1"
          rgba="0.2 0.2 0.25 1"/>
    <geom name="mid_hi" type="box" pos="0 {(DOOR_Y + DOOR_WIDTH / 2 + HALF) / 2} 0.1"
          size="{WALL} {(HALF - DOOR_Y - DOOR_WIDTH / 2) / 2} 0.1" rgba="0.2 0.2 0.25 1"/>
    <geom name="mid_lo" type="box" pos="0 {(DOOR_Y - DOOR_WIDTH / 2 - HALF) / 2} 0.1"
          size="{WALL} {(HALF + DOOR_Y - DOOR_WIDTH / 2) / 2} 0.1" rgba="0.2 0.2 0.25 1"/>
    <body name="agent" pos="0 0 0.1">
      <joint name="x" type="slide" axis="1 0 0" damping="0.5"/>
      <joint name="y" type="slide" axis="0 1 0" damping="0.5"/>
      <geom name="agent" type="cylinder" size="{AGENT_R} 0.05" mass="1" rgba="0.85 0.15 0.1 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="x" kv="20" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
    <velocity name="vy" joint="y" kv="20" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
  </actuator>
</mujoco>
"""


def door_center() -> np.ndarray:
    """(2,) position of the door's centre, used by the scripted expert."""
    return np.array([0.0, DOOR_Y])


def room_of(x: np.ndarray | float) -> np.ndarray:
    """-1 (left room), +1 (right room), 0 (inside the door/wall band) for x positions."""
    x = np.asarray(x)
    return np.where(x < -WALL, -1, np.where(x > WALL, 1, 0))


@register_env("tworoom", "wm/TwoRoom-v0", max_episode_steps=100)
class TwoRoom(MujocoGoalEnv):
    """Point agent in two rooms; goal = a state (position); success within 0.157 m."""

    def __init__(self, image_size: int = 64, render_mode: str = "rgb_array"):
        self.model = mujoco.MjModel.from_xml_string(_XML)
        self.data = mujoco.MjData(self.model)
        self._n_sub = int(round(1.0 / (CONTROL_HZ * PHYS_DT)))
        self.ctrl_scale = MAX_SPEED
        super().__init__(image_size=image_size, render_mode=render_mode)
        self._renderer = FastRenderer(self.model, image_size, camera="top")
        mujoco.mj_forward(self.model, self.data)

    def env_info(self) -> EnvInfo:
        return EnvInfo(
            action_low=np.full(2, -1.0, np.float32),
            action_high=np.full(2, 1.0, np.float32),
            control_hz=CONTROL_HZ,
            state_names=("x", "y", "vx", "vy"),
            proprio_names=("x", "y", "vx", "vy"),
            success=f"agent within {SUCCESS_DIST:.3f} m of the goal position (16 px of 224)",
            extra={"arena_half_width_m": HALF, "fov_m": FOV, "door_width_m": DOOR_WIDTH,
                   "door_y_m": DOOR_Y, "max_speed_mps": MAX_SPEED,
                   "success_dist_m": SUCCESS_DIST, "action": "commanded velocity / max_speed"},
            pose_dims=(0, 1),
        )

    # ---- simulation hooks --------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        mujoco.mj_resetData(self.model, self.data)
        lo, hi = WALL + AGENT_R + 0.02, HALF - AGENT_R - 0.02
        side = rng.choice([-1.0, 1.0])
        x = side * rng.uniform(lo, hi)
        y = rng.uniform(-hi, hi)
        self.data.qpos[:] = (x, y)
        mujoco.mj_forward(self.model, self.data)

    def get_proprio(self) -> np.ndarray:
        return self.get_state().astype(np.float32)

    def goal_error(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        d = np.linalg.norm(np.asarray(state)[:2] - np.asarray(goal_state)[:2])
        return float(d / SUCCESS_DIST)

    def episode_metrics(self, states: np.ndarray) -> dict[str, float]:
        """crossed_door: 1.0 if the agent was seen in both rooms during the episode (T, 4)."""
        rooms = room_of(np.asarray(states)[:, 0])
        return {"crossed_door": float((rooms < 0).any() and (rooms > 0).any())}
