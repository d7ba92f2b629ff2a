"""The goal-reaching environment interface every simulator in `envs/` implements.

A `GoalEnv` is a gymnasium `Env` whose observation is the rendered image (H, W, 3) uint8, so a
planner built on it only ever sees pixels. Simulator state travels in `info` (for data collection
and scoring) and through `get_state` / `set_state`. A goal is a state; its goal image is that state
rendered by the same camera (`goal_image`). `goal_error(state, goal_state)` scores it: the worst
criterion error as a fraction of its tolerance, so success (`is_success`) is an error below 1 in
every env, and how close a failure came is comparable across envs.

Envs know nothing about models or planners.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import gymnasium as gym
import mujoco
import numpy as np


@dataclass(frozen=True)
class EnvInfo:
    """Static metadata a dataset records and a controller needs."""

    action_low: np.ndarray            # (A,) float32
    action_high: np.ndarray           # (A,) float32
    control_hz: float                 # env steps per second of simulated time
    state_names: tuple[str, ...]      # layout of get_state()
    proprio_names: tuple[str, ...]    # layout of info["proprio"]
    success: str = ""                 # human-readable success criterion
    extra: dict[str, Any] = field(default_factory=dict)
    # The state coordinates one frame shows (positions and angles, not velocities; None = all)
    # and which of them are angles: what the training's state probe reads (angles as sin, cos).
    pose_dims: tuple[int, ...] | None = None
    angle_dims: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
            "control_hz": self.control_hz,
            "state_names": list(self.state_names),
            "proprio_names": list(self.proprio_names),
            "success": self.success,
            "pose_dims": list(range(len(self.state_names)) if self.pose_dims is None else self.pose_dims),
            "angle_dims": list(self.angle_dims),
            **({"extra": self.extra} if self.extra else {}),
        }


class GoalEnv(gym.Env, ABC):
    """Base class: seeded reset, clipped actions, pixel observations, state round trip, goals.

    Subclasses implement the `_`-prefixed hooks; the public methods here enforce the contract
    (actions are always clipped to the bounds, observations are (H, W, 3) uint8).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image_size: int = 64, render_mode: str = "rgb_array"):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.image_size = image_size
        self.render_mode = render_mode
        info = self.env_info()
        self.action_space = gym.spaces.Box(info.action_low, info.action_high, dtype=np.float32)
        self.observation_space = gym.spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        self.metadata = {**self.metadata, "render_fps": int(round(info.control_hz))}

    # ---- hooks for subclasses ----------------------------------------------------------------
    @abstractmethod
    def env_info(self) -> EnvInfo:
        """Static metadata (bounds, control rate, state layout)."""

    @abstractmethod
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        """Put the simulator in a fresh random initial state drawn from `rng`."""

    @abstractmethod
    def _step_sim(self, action: np.ndarray) -> None:
        """Advance one control step with an already-clipped action."""

    @abstractmethod
    def _render(self) -> np.ndarray:
        """(H, W, 3) uint8 image of the current state."""

    @abstractmethod
    def get_state(self) -> np.ndarray:
        """(S,) float64 full simulator state; `set_state(get_state())` is exact."""

    @abstractmethod
    def set_state(self, state: np.ndarray) -> None:
        """Restore a state from `get_state()`."""

    @abstractmethod
    def get_proprio(self) -> np.ndarray:
        """(P,) float32 proprioception (what a robot could measure about itself)."""

    @abstractmethod
    def goal_error(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        """The env's success criterion as a number: the largest of its errors (position, angle, ...)
        each divided by its tolerance. 0 at the goal; below 1 is success."""

    goal_error_names: tuple[str, ...] = ("error",)   # what each of goal_errors' K entries measures

    def goal_errors(self, state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
        """Each of the criterion's errors divided by its tolerance, (K,) named by `goal_error_names`;
        `goal_error` is their max. Default: the one error `goal_error` gives (override both where the
        criterion has several)."""
        return np.array([self.goal_error(state, goal_state)])

    def is_success(self, state: np.ndarray, goal_state: np.ndarray) -> bool:
        """Whether `state` satisfies the goal `goal_state` (the env's own criterion)."""
        return self.goal_error(state, goal_state) < 1.0

    # ---- public contract ---------------------------------------------------------------------
    goal_state: np.ndarray | None = None     # the episode's goal: info's goal_error and is_success

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """options: `state` (start there), `goal_state` (the goal info scores; without one a goal is
        drawn from the start distribution by a generator of its own, so starts stay as seeded)."""
        super().reset(seed=seed)
        options = dict(options or {})
        goal = options.pop("goal_state", None)
        if goal is None:
            self._reset_sim(np.random.Generator(self.np_random.bit_generator.jumped()), {})
            goal = self.get_state()
        self._reset_sim(self.np_random, options)
        if "state" in options:
            self.set_state(np.asarray(options["state"], dtype=np.float64))
        goal, size = np.array(goal, dtype=np.float64), self.get_state().shape
        if goal.shape != size:
            raise ValueError(f"reset: options['goal_state'] must be a state of shape {size} "
                             f"({', '.join(self.env_info().state_names)}), got {goal.shape}")
        self.goal_state = goal
        return self.render(), self._info()

    def step(self, action):
        action = self.clip_action(action)
        self._step_sim(action)
        self._check_sim()
        return self.render(), 0.0, False, False, self._info()

    def _check_sim(self) -> None:
        """Raise SimulationDiverged if the last step left the simulator without a valid state."""

    def clip_action(self, action) -> np.ndarray:
        a = np.asarray(action, dtype=np.float32).reshape(self.action_space.shape)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN/Inf: {a}; refusing to send it to the system")
        return np.clip(a, self.action_space.low, self.action_space.high)

    def render(self) -> np.ndarray:
        return self._render()

    def goal_image(self, goal_state: np.ndarray) -> np.ndarray:
        """Render `goal_state` with the observation camera, leaving the env's state unchanged."""
        saved = self.get_state()
        self.set_state(goal_state)
        img = self.render()
        self.set_state(saved)
        return img

    def episode_metrics(self, states: np.ndarray) -> dict[str, float]:
        """Per-episode coverage facts from a (T, S) state array (e.g. TwoRoom "crossed_door").

        Optional: envs without such facts return {}. `wm inspect` averages them over episodes.
        """
        return {}

    def _info(self) -> dict[str, Any]:
        state = self.get_state()
        info = {"state": state, "proprio": self.get_proprio()}
        if self.goal_state is not None:       # set by reset(); a sim stepped from set_state alone has none
            info |= {"goal_error": self.goal_error(state, self.goal_state),
                     "is_success": bool(self.is_success(state, self.goal_state))}
        return info


class SimulationDiverged(RuntimeError):
    """A step blew the physics up (MuJoCo's bad qacc / qpos / qvel warnings: MuJoCo then resets
    the state to the model's initial pose, a jump no dataset or episode should contain). The
    state before that step is the episode's last valid one."""


def step_dm_physics(physics: Any, nstep: int, name: str) -> None:
    """`physics.step(nstep)` of a dm_control Physics, whose own divergence check (PhysicsError)
    is raised as SimulationDiverged like every other env's."""
    from dm_control.rl.control import PhysicsError

    try:
        physics.step(nstep)
    except PhysicsError as e:
        raise SimulationDiverged(f"{name}: the physics diverged in this step ({e})") from e


_DIVERGENCE = (mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_BADQPOS,
               mujoco.mjtWarning.mjWARN_BADQVEL)


class MujocoGoalEnv(GoalEnv):
    """A GoalEnv over one MuJoCo `MjModel`/`MjData`: state = (qpos, qvel, act) (act: actuator
    activations, empty in most models; without them a muscle or filtered actuator's state would
    be lost on `set_state`, e.g. dm_control's dog and quadruped), renders through
    `self._renderer` (an envs.render.FastRenderer). Subclasses set `model`, `data`, `_renderer`
    and, for the default velocity control, `_n_sub` (physics steps per control step) and
    `ctrl_scale` (ctrl = action * ctrl_scale)."""

    ctrl_scale: float = 1.0
    _n_sub: int = 1

    def physics_controls(self, actions: np.ndarray) -> np.ndarray:
        """What `_step_sim` writes to MuJoCo's ctrl, per physics step: (..., T, A) clipped env
        actions -> (..., T * n_sub, nu). envs.sim_rollout replays candidate action sequences with
        it (and checks the replay against `step`); an env whose step maps actions otherwise
        overrides this."""
        a = np.asarray(actions, dtype=np.float64) * self.ctrl_scale
        return np.repeat(a, self._n_sub, axis=-2)

    def _step_sim(self, action: np.ndarray) -> None:
        self.data.ctrl[:] = action.astype(np.float64) * self.ctrl_scale
        mujoco.mj_step(self.model, self.data, nstep=self._n_sub)
        mujoco.mj_forward(self.model, self.data)   # positions for rendering match qpos exactly

    def step(self, action):
        for w in _DIVERGENCE:                      # counted from this step on
            self.data.warning[w].number = 0
        return super().step(action)

    def _check_sim(self) -> None:
        bad = [mujoco.mjtWarning(w).name for w in _DIVERGENCE if self.data.warning[w].number]
        if bad:
            raise SimulationDiverged(f"{type(self).__name__}: the physics diverged in this step "
                                     f"({', '.join(bad)}); MuJoCo reset the state")

    def _render(self) -> np.ndarray:
        return self._renderer.render(self.data)

    def get_state(self) -> np.ndarray:
        return np.concatenate([self.data.qpos, self.data.qvel, self.data.act]).astype(np.float64)

    def set_state(self, state: np.ndarray) -> None:
        nq, nv, size = self.model.nq, self.model.nv, state_size(self.model)
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (size,):
            names = ", ".join(self.env_info().state_names)
            raise ValueError(f"{type(self).__name__} state must have {size} entries ({names}), "
                             f"got {state.shape}")
        self.data.act[:] = state[nq + nv:]
        self._write_state(state[:nq], state[nq:nq + nv])

    def _write_state(self, qpos: np.ndarray, qvel: np.ndarray) -> None:
        self.data.qpos[:] = qpos
        self.data.qvel[:] = qvel
        self.data.ctrl[:] = 0.0
        mujoco.mj_forward(self.model, self.data)

    def close(self) -> None:
        self._renderer.close()
        super().close()


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    """Map angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def state_size(model: mujoco.MjModel) -> int:
    """Entries of a MujocoGoalEnv state: nq + nv + na."""
    return int(model.nq + model.nv + model.na)


def state_names(model: mujoco.MjModel) -> tuple[str, ...]:
    """Names of the (qpos, qvel, act) state coordinates from the model's joints and actuators:
    'qpos:<joint>' or 'qpos:<joint>[k]' for multi-coordinate joints (free, ball), the same for
    'qvel:', then 'act:<actuator>' for each actuator with an activation."""
    def names(prefix: str, n: int, adr: np.ndarray) -> list[str]:
        out = [f"{prefix}{i}" for i in range(n)]
        starts = sorted(int(a) for a in adr)
        for j in range(model.njnt):
            jn = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}"
            start = int(adr[j])
            end = next((a for a in starts if a > start), n)
            for k in range(start, end):
                out[k] = f"{prefix}{jn}" + (f"[{k - start}]" if end - start > 1 else "")
        return out
    act = [f"act{i}" for i in range(model.na)]
    for u in range(model.nu):
        start, n = int(model.actuator_actadr[u]), int(model.actuator_actnum[u])
        un = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, u) or f"actuator{u}"
        if start < 0:
            continue                    # no activation: a plain force/position actuator
        for k in range(start, start + n):
            act[k] = f"act:{un}" + (f"[{k - start}]" if n > 1 else "")
    return tuple(names("qpos:", model.nq, model.jnt_qposadr) + names("qvel:", model.nv, model.jnt_dofadr)
                 + act)


def hinge_qpos_dims(model: mujoco.MjModel) -> tuple[int, ...]:
    """qpos indices of the model's hinge joints: angles (a slide or free joint's are not)."""
    return tuple(int(model.jnt_qposadr[j]) for j in range(model.njnt)
                 if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE)


def quat_qpos_starts(model: mujoco.MjModel) -> tuple[int, ...]:
    """qpos index of each 4-coordinate orientation quaternion (a free joint's after its position,
    a ball joint's whole qpos)."""
    out = []
    for j in range(model.njnt):
        if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE:
            out.append(int(model.jnt_qposadr[j]) + 3)
        elif model.jnt_type[j] == mujoco.mjtJoint.mjJNT_BALL:
            out.append(int(model.jnt_qposadr[j]))
    return tuple(out)


# An adapter refuses action bounds beyond this without an explicit action_limit (dm_control's LQR
# declares +-1e10: sampling inside such bounds is meaningless).
MAX_ACTION_BOUND = 1e6


class StateGoalEnv(MujocoGoalEnv):
    """A MujocoGoalEnv for a simulator with no goal notion of its own (the generic adapters):
    a goal is any state, success is the Euclidean distance over the state coordinates
    `success_dims` (default: every qpos coordinate) below `success_threshold`, measured between
    poses, not their coordinates: hinge angles modulo 2 pi (an unlimited hinge, e.g. a pendulum or
    Reacher-v5's shoulder, may wind several turns) and quaternions up to sign (q and -q are one
    rotation). Proprioception is the whole state."""

    def _set_success(self, success_dims: Sequence[int] | None, success_threshold: float) -> None:
        nq, size = int(self.model.nq), state_size(self.model)
        dims = list(range(nq)) if success_dims is None else [int(d) for d in success_dims]
        if not dims or min(dims) < 0 or max(dims) >= size:
            raise ValueError(f"success_dims must index the state (0..{size - 1}), got {dims}")
        if not success_threshold > 0:
            raise ValueError(f"success_threshold must be > 0, got {success_threshold!r}")
        self.success_dims = np.asarray(dims)
        self.success_threshold = float(success_threshold)
        self._hinge_dims = np.asarray(hinge_qpos_dims(self.model), dtype=np.int64)
        self._quat_starts = quat_qpos_starts(self.model)

    def _set_action_limit(self, action_limit: float | None) -> None:
        if action_limit is not None and not action_limit > 0:
            raise ValueError(f"action_limit must be > 0, got {action_limit!r}")
        self.action_limit = None if action_limit is None else float(action_limit)

    def _state_env_info(self, action_low: np.ndarray, action_high: np.ndarray, control_hz: float,
                        extra: dict[str, Any]) -> EnvInfo:
        """The EnvInfo of an adapter: its bounds (narrowed to +-action_limit when one is given),
        rate and `extra`, plus what every adapter shares (state names, the success criterion, qpos
        as the pose with hinge joints as angles)."""
        low, high = np.asarray(action_low, np.float64), np.asarray(action_high, np.float64)
        if self.action_limit is not None:
            low, high = np.maximum(low, -self.action_limit), np.minimum(high, self.action_limit)
        elif (reach := max(np.abs(low).max(), np.abs(high).max())) > MAX_ACTION_BOUND:
            who = ", ".join(str(v) for v in extra.values()) or type(self).__name__
            raise ValueError(f"{who}: action bounds reach {reach:g}, "
                             "effectively unbounded, and every data policy and planner samples inside "
                             "them. Bound them with action_limit=<L> (command line: "
                             "+env.kwargs.action_limit=1)")
        names = state_names(self.model)
        return EnvInfo(
            action_low=low.astype(np.float32),
            action_high=high.astype(np.float32),
            control_hz=float(control_hz),
            state_names=names,
            proprio_names=names,
            success=(f"L2 distance over state dims {self.success_dims.tolist()} < {self.success_threshold} "
                     "(hinge angles modulo 2 pi, quaternions up to sign)"),
            extra={**extra, "nq": int(self.model.nq), "nv": int(self.model.nv), "na": int(self.model.na),
                   "success_dims": self.success_dims.tolist(), "success_threshold": self.success_threshold},
            pose_dims=tuple(range(self.model.nq)),
            angle_dims=hinge_qpos_dims(self.model),
        )

    def get_proprio(self) -> np.ndarray:
        return self.get_state().astype(np.float32)

    def nearest_goal(self, state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
        """`goal_state` rewritten as the coordinates of the same pose nearest `state`: each hinge
        angle moved by whole turns, each quaternion's sign flipped where that brings it closer."""
        s = np.asarray(state, dtype=np.float64)
        g = np.array(goal_state, dtype=np.float64)
        h = self._hinge_dims
        g[h] = s[h] - wrap_angle(s[h] - g[h])
        for a in self._quat_starts:
            if np.dot(s[a:a + 4], g[a:a + 4]) < 0:
                g[a:a + 4] *= -1.0
        return g

    def goal_error(self, state: np.ndarray, goal_state: np.ndarray) -> float:
        dims = self.success_dims
        d = np.asarray(state, dtype=np.float64)[dims] - self.nearest_goal(state, goal_state)[dims]
        return float(np.linalg.norm(d) / self.success_threshold)
