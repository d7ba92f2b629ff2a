"""Push-T: push a T-shaped block with a round pusher on a table, seen from above (MuJoCo).

The LeWM / Diffusion-Policy Push-T task rebuilt in metric units (the original 512 px workspace is
1 m; sizes below in the constants), with real pusher-block and block-wall contacts and table
friction as joint `frictionloss`, so the block stops when released.

- Action (2,) in [-1, 1]: commanded pusher velocity / `MAX_SPEED`.
- State (10,) = qpos + qvel: agent (x, y), block (x, y, theta) at the T's centre of area, then their
  velocities. Proprio: agent (x, y, vx, vy).
- Success (LeWM / DINO-WM's PushT.eval_state): the L2 norm of the agent and block position errors
  taken together < `POS_TOL` and wrapped block angle error < `ANGLE_TOL`.
"""
from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from worldmodel.envs.base import EnvInfo, MujocoGoalEnv, wrap_angle
from worldmodel.envs.registry import register_env
from worldmodel.envs.render import FastRenderer

HALF = 0.5                        # workspace half-width (m)
WALL = 0.02                       # wall half-thickness (m)
FOV = 2 * (HALF + WALL)           # camera field of view (m)
AGENT_R = 15 / 512                # pusher radius (m)
BAR = (60 / 512, 15 / 512)        # bar half-sizes (m): 120 x 30 px
STEM = (15 / 512, 45 / 512)       # stem half-sizes (m): 30 x 90 px
STEM_Y = -(BAR[1] + STEM[1])      # stem centre in the block frame (m)
MAX_SPEED = 0.4                   # m/s at |action| = 1
CONTROL_HZ = 10.0
PHYS_DT = 0.01
POS_TOL = 20 / 512 * (2 * HALF)   # LeWM: 20 px of the 512 px workspace
ANGLE_TOL = np.pi / 9
MOVED_DIST = 0.05                 # block_moved: block displaced > 5 cm ...
MOVED_ANGLE = np.pi / 18          # ... or rotated > 10 degrees from its initial pose

_BAR_A, _STEM_A = 4 * BAR[0] * BAR[1], 4 * STEM[0] * STEM[1]
COM_Y = _STEM_A * STEM_Y / (_BAR_A + _STEM_A)     # centre of area relative to the bar centre
BLOCK_RADIUS = float(np.hypot(STEM[0], STEM_Y - COM_Y - STEM[1]))  # farthest point from the frame

_XML = f"""
<mujoco model="pusht">
  <option timestep="{PHYS_DT}" gravity="0 0 0" integrator="implicitfast"/>
  <visual>
    <global offwidth="64" offheight="64"/>
    <headlight ambient="0.55 0.55 0.55" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <default>
    <geom contype="1" conaffinity="1" friction="0.6 0.005 0.0001" solref="0.01 1"/>
  </default>
  <worldbody>
    <camera name="top" pos="0 0 2" xyaxes="1 0 0 0 1 0" projection="orthographic" fovy="{FOV}"/>
    <geom name="table" type="box" size="{FOV / 2} {FOV / 2} 0.01" rgba="0.94 0.94 0.94 1"
          contype="0" conaffinity="0"/>
    <geom type="box" pos="0 {HALF + WALL} 0.03" size="{HALF + 2 * WALL} {WALL} 0.03" rgba="0.3 0.3 0.3 1"/>
    <geom type="box" pos="0 {-HALF - WALL} 0.03" size="{HALF + 2 * WALL} {WALL} 0.03" rgba="0.3 0.3 0.3 1"/>
    <geom type="box" pos="{HALF + WALL} 0 0.03" size="{WALL} {HALF} 0.03" rgba="0.3 0.3 0.3 1"/>
    <geom type="box" pos="{-HALF - WALL} 0 0.03" size="{WALL} {HALF} 0.03" rgba="0.3 0.3 0.3 1"/>
    <body name="agent" pos="0 0 0.03">
      <joint name="agent_x" type="slide" axis="1 0 0" damping="0.1"/>
      <joint name="agent_y" type="slide" axis="0 1 0" damping="0.1"/>
      <geom name="agent" type="cylinder" size="{AGENT_R} 0.02" mass="0.5" rgba="0.25 0.41 0.88 1"/>
    </body>
    <body name="block" pos="0 0 0.03">
      <joint name="block_x" type="slide" axis="1 0 0" damping="0.2" frictionloss="0.4"/>
      <joint name="block_y" type="slide" axis="0 1 0" damping="0.2" frictionloss="0.4"/>
      <joint name="block_theta" type="hinge" axis="0 0 1" damping="0.005" frictionloss="0.01"/>
      <geom name="bar" type="box" pos="0 {-COM_Y} 0" size="{BAR[0]} {BAR[1]} 0.02" mass="0.12"
            rgba="0.47 0.53 0.6 1"/>
      <geom name="stem" type="box" pos="0 {STEM_Y - COM_Y} 0" size="{STEM[0]} {STEM[1]} 0.02"
            mass="0.09" rgba="0.47 0.53 0.6 1"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="agent_x" kv="15" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
    <velocity name="vy" joint="agent_y" kv="15" ctrlrange="{-MAX_SPEED} {MAX_SPEED}"/>
  </actuator>
</mujoco>
"""


@register_env("pusht", "wm/PushT-v0")
class PushT(MujocoGoalEnv):
    """Planar pusher and T block; goal = a full state; success = LeWM's pose criterion."""

    def __init__(self, image_size: int = 64, render_mode: str = "rgb_array"):
        self.model = mujoco.MjModel.from_xml_string(_XML)
        self.data = mujoco.MjData(self.model)
        self._n_sub = int(round(1.0 / (CONTROL_HZ * PHYS_DT)))
        self.ctrl_scale = MAX_SPEED
        super().__init__(image_size=image_size, render_mode=render_mode)
        self._renderer = FastRenderer(self.model, image_size, camera="top")
        mujoco.mj_forward(self.model, self.data)

    def env_info(self) -> EnvInfo:
        names = ("agent_x", "agent_y", "block_x", "block_y", "block_theta",
                 "agent_vx", "agent_vy", "block_vx", "block_vy", "block_omega")
        return EnvInfo(
            action_low=np.full(2, -1.0, np.float32),
            action_high=np.full(2, 1.0, np.float32),
            control_hz=CONTROL_HZ,
            state_names=names,
            proprio_names=("agent_x", "agent_y", "agent_vx", "agent_vy"),
            success=(f"L2 norm of the agent and block position errors together (4 coordinates) < "
                     f"{POS_TOL:.4f} m (20/512 of the workspace) and wrapped block angle error < pi/9"),
            extra={"workspace_m": 2 * HALF, "max_speed_mps": MAX_SPEED, "pos_tol_m": POS_TOL,
                   "angle_tol_rad": ANGLE_TOL, "action": "commanded pusher velocity / max_speed",
                   "block_moved": f"displacement > {MOVED_DIST} m or rotation > pi/18"},
            pose_dims=(0, 1, 2, 3, 4),
            angle_dims=(4,),
        )

    # ---- simulation hooks --------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        mujoco.mj_resetData(self.model, self.data)
        block = np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.25, 0.25),
                          rng.uniform(-np.pi, np.pi)])
        while True:  # pusher anywhere in the workspace, clear of the block
            agent = rng.uniform(-HALF + 0.05, HALF - 0.05, size=2)
            if np.linalg.norm(agent - block[:2]) > 0.2:
                break
        self.data.qpos[:] = np.r_[agent, block]
        mujoco.mj_forward(self.model, self.data)

    def get_proprio(self) -> np.ndarray:
        s = self.get_state()
        return np.r_[s[0:2], s[5:7]].astype(np.float32)

    goal_error_names = ("position", "angle")

    def goal_errors(self, state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
        """(position, block angle) errors over their tolerances, (2,). The position error is one L2
        norm over agent x, y and block x, y together, as LeWM / DINO-WM's PushT.eval_state has it
        (not a tolerance per body: 20 px each would pass joint errors up to 28 px)."""
        s, g = np.asarray(state), np.asarray(goal_state)
        pos = np.linalg.norm(s[0:4] - g[0:4]) / POS_TOL
        angle = abs(float(wrap_angle(s[4] - g[4]))) / ANGLE_TOL
        return np.array([pos, angle])

    def goal_error(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        return float(self.goal_errors(state, goal_state).max())

    def episode_metrics(self, states: np.ndarray) -> dict[str, float]:
        """block_moved: 1.0 if the block left its initial pose by > 5 cm or > 10 degrees."""
        s = np.asarray(states)
        moved = np.linalg.norm(s[:, 2:4] - s[0, 2:4], axis=1).max() > MOVED_DIST
        turned = np.abs(wrap_angle(s[:, 4] - s[0, 4])).max() > MOVED_ANGLE
        return {"block_moved": float(moved or turned)}
