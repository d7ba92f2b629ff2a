"""Scripted data-collection policies: uniform random, temporally correlated noise, noisy experts.

World-model data must cover the state space, not solve tasks, so the experts are deliberately
noisy: they pursue random sub-goals (TwoRoom: a point, often in the other room; Push-T: push the
block toward a random target pose; Reacher: random joint targets). They may read `info["state"]`;
they are never used for planning.

    policy = make_policy("expert", env, np.random.default_rng(0))
    policy.reset(obs, info)
    action = policy.act(obs, info)          # (A,) float32 inside env.action_space

All randomness comes from the `rng` passed in, so a seed reproduces an episode exactly.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

from typing import Any, Callable

import numpy as np

from worldmodel.envs import pusht, reacher, tworoom
from worldmodel.envs.base import GoalEnv
from worldmodel.envs.registry import ENVS

POLICIES: dict[str, type["Policy"]] = {}
EXPERTS: dict[str, type["Policy"]] = {}      # env short name -> its scripted expert


def register_policy(name: str) -> Callable[[type], type]:
    """Class decorator: make a policy available to `make_policy(name, ...)`."""
    def deco(cls: type) -> type:
        if name in POLICIES:
            raise ValueError(f"policy {name!r} registered twice")
        POLICIES[name] = cls
        return cls
    return deco


def register_expert(env_name: str) -> Callable[[type], type]:
    """Class decorator: the scripted expert `make_policy("expert", env)` uses for `env_name`."""
    def deco(cls: type) -> type:
        EXPERTS[env_name] = cls
        return cls
    return deco


def list_policies() -> list[str]:
    return sorted(POLICIES)


def make_policy(name: str, env: GoalEnv, rng: np.random.Generator, **kwargs: Any) -> "Policy":
    """Build a data policy for `env`; `kwargs` go to the policy constructor (e.g. noise scale)."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}. Choose one of {list_policies()}.")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("make_policy needs an np.random.Generator, e.g. np.random.default_rng(seed)")
    return POLICIES[name](env, rng, **kwargs)


def env_short_name(env: GoalEnv) -> str | None:
    """Registry short name of `env`'s class (None for unregistered envs)."""
    base = getattr(env, "unwrapped", env)
    for name, cls in ENVS.items():
        if type(base) is cls:
            return name
    return None


class Policy(ABC):
    """Base: holds the env's action bounds and the rng; `act` returns an in-bounds (A,) float32."""

    def __init__(self, env: GoalEnv, rng: np.random.Generator):
        self.env = env
        self.rng = rng
        self.low = np.asarray(env.action_space.low, dtype=np.float64)
        self.high = np.asarray(env.action_space.high, dtype=np.float64)
        self.mid = (self.low + self.high) / 2
        self.half = (self.high - self.low) / 2

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        """Start of an episode (default: nothing to reset)."""

    @abstractmethod
    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """An in-bounds (A,) float32 action for this observation."""

    def _out(self, a_unit: np.ndarray) -> np.ndarray:
        """Map an action in [-1, 1] units to the env's bounds, clipped, as float32."""
        a = self.mid + np.clip(a_unit, -1.0, 1.0) * self.half
        return np.clip(a, self.low, self.high).astype(np.float32)


@register_policy("random")
class RandomPolicy(Policy):
    """Uniform i.i.d. actions over the bounds."""

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self.rng.uniform(self.low, self.high).astype(np.float32)


class Smoothed:
    """AR(1) noise in [-1, 1] units: x <- beta x + sqrt(1 - beta^2) * scale * N(0, 1).

    The stationary std is `scale`; `beta` sets the correlation time (~1 / (1 - beta) steps).
    """

    def __init__(self, dim: int, rng: np.random.Generator, beta: float, scale: float):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"noise beta must be in [0, 1), got {beta}")
        self.dim, self.rng, self.beta, self.scale = dim, rng, beta, scale
        self.x = np.zeros(dim)

    def reset(self) -> None:
        self.x = self.rng.normal(0.0, self.scale, self.dim)

    def __call__(self) -> np.ndarray:
        eps = self.rng.normal(0.0, 1.0, self.dim)
        self.x = self.beta * self.x + np.sqrt(1 - self.beta ** 2) * self.scale * eps
        return self.x


@register_policy("noise")
class NoisePolicy(Policy):
    """Temporally correlated exploration noise (AR(1)/OU-like), clipped to the bounds."""

    def __init__(self, env: GoalEnv, rng: np.random.Generator, beta: float = 0.9,
                 scale: float = 0.7):
        super().__init__(env, rng)
        self.noise = Smoothed(self.low.shape[0], rng, beta, scale)

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.noise.reset()

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self._out(self.noise())


@register_policy("expert")
class ExpertPolicy(Policy):
    """Dispatch to the env's scripted expert; envs without one (the generic adapters) get `noise`."""

    def __init__(self, env: GoalEnv, rng: np.random.Generator, **kwargs: Any):
        super().__init__(env, rng)
        cls = EXPERTS.get(env_short_name(env) or "", NoisePolicy)
        self.inner: Policy = cls(env, rng, **kwargs)

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.inner.reset(obs, info)

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        return self.inner.act(obs, info)


@register_expert("tworoom")
class TwoRoomExpert(Policy):
    """Walk to random points; with prob `p_cross` the point is in the other room (via the door)."""

    def __init__(self, env: GoalEnv, rng: np.random.Generator, p_cross: float = 0.5,
                 noise: float = 0.35, gain: float = 4.0):
        super().__init__(env, rng)
        self.p_cross, self.gain = p_cross, gain
        self.noise = Smoothed(2, rng, beta=0.8, scale=noise)
        self.waypoints: list[np.ndarray] = []

    def _plan(self, pos: np.ndarray) -> None:
        """Pick a random target point and the waypoints leading to it."""
        side = tworoom.room_of(pos[0]) or (1 if pos[0] >= 0 else -1)
        goal_side = -side if self.rng.random() < self.p_cross else side
        m = tworoom.WALL + tworoom.AGENT_R + 0.05
        hi = tworoom.HALF - tworoom.AGENT_R - 0.05
        target = np.array([goal_side * self.rng.uniform(m, hi), self.rng.uniform(-hi, hi)])
        door = tworoom.door_center()
        self.waypoints = []
        if goal_side != side:
            self.waypoints += [door + [side * 0.2, 0.0], door + [goal_side * 0.2, 0.0]]
        self.waypoints.append(target)

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.noise.reset()
        self._plan(np.asarray(info["state"][:2]))

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        pos = np.asarray(info["state"][:2])
        while self.waypoints and np.linalg.norm(self.waypoints[0] - pos) < 0.1:
            self.waypoints.pop(0)
        if not self.waypoints:
            self._plan(pos)
        delta = self.waypoints[0] - pos
        w = 0.3 if len(self.waypoints) > 1 else 1.0   # steer tightly through the door
        return self._out(self.gain * delta + w * self.noise())


@register_expert("pusht")
class PushTExpert(Policy):
    """Go behind the block (around it if needed) and push it toward a random target, with noise.

    The push line aims `offset` beside the block's centre so pushes also rotate it; a new target is
    drawn when the block gets there or after `patience` steps. Targets whose push start ("behind"
    the block) lies outside the walls are not drawn, and the way round the block ends behind it:
    either would park the pusher, leaving many training windows with nothing moving.
    """

    def __init__(self, env: GoalEnv, rng: np.random.Generator, noise: float = 0.3,
                 push_speed: float = 0.7, patience: int = 60):
        super().__init__(env, rng)
        self.noise = Smoothed(2, rng, beta=0.7, scale=noise)
        self.push_speed, self.patience = push_speed, patience
        self.standoff = pusht.BLOCK_RADIUS + pusht.AGENT_R + 0.03
        self.reach = pusht.HALF - pusht.AGENT_R - 0.01      # pusher centre limit inside the walls

    def _new_target(self, com: np.ndarray) -> None:
        best, best_out = None, np.inf
        for _ in range(100):
            t = self.rng.uniform(-0.3, 0.3, size=2)
            if np.linalg.norm(t - com) <= 0.12:
                continue
            behind = com - (t - com) / np.linalg.norm(t - com) * self.standoff
            out = np.max(np.abs(behind)) - self.reach      # > 0: the push start is behind a wall
            if out <= 0:
                best = t
                break
            if out < best_out:                             # block in a corner: least-bad push
                best, best_out = t, out
        self.target, self.offset = best, self.rng.uniform(-0.05, 0.05)
        self.pushing, self.age = False, 0

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.noise.reset()
        self._new_target(np.asarray(info["state"][2:4]))

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        s = np.asarray(info["state"])
        agent, com = s[0:2], s[2:4]
        self.age += 1
        if np.linalg.norm(self.target - com) < 0.04 or self.age > self.patience:
            self._new_target(com)
        d = self.target - com
        d /= np.linalg.norm(d)
        n = np.array([-d[1], d[0]])
        rel = agent - com
        along, lateral = rel @ d, rel @ n - self.offset
        behind = com + n * self.offset - d * self.standoff
        if self.pushing and (abs(lateral) > 0.07 or along > 0.0):
            self.pushing = False                      # slipped off the block: re-approach
        if not self.pushing and np.linalg.norm(agent - behind) < 0.03:
            self.pushing = True
        if self.pushing:                              # push along d, correct the lateral drift
            v = self.push_speed * d - 3.0 * lateral * n
        else:
            goal = behind
            if along > -0.1 and np.linalg.norm(rel) < self.standoff + 0.05:
                side = 1.0 if lateral >= 0 else -1.0  # in front or beside: go round the block,
                goal = com + side * n * (self.standoff + 0.03) - d * self.standoff  # to its back
            delta = goal - agent
            v = delta / max(np.linalg.norm(delta), 1e-6) * min(1.0, np.linalg.norm(delta) / 0.04)
        return self._out(v + self.noise())


@register_expert("reacher")
class ReacherExpert(Policy):
    """PD control toward random joint targets, resampled when reached or after `patience` steps."""

    def __init__(self, env: GoalEnv, rng: np.random.Generator, noise: float = 0.3,
                 kp: float = 3.0, kd: float = 0.3, patience: int = 60):
        super().__init__(env, rng)
        self.noise = Smoothed(2, rng, beta=0.8, scale=noise)
        self.kp, self.kd, self.patience = kp, kd, patience
        self.wrist_range = getattr(env.unwrapped, "wrist_range", np.array([-2.79, 2.79]))

    def _new_target(self) -> None:
        lo, hi = self.wrist_range
        self.target = np.array([self.rng.uniform(-np.pi, np.pi), self.rng.uniform(lo, hi)])
        self.age = 0

    def reset(self, obs: np.ndarray, info: dict[str, Any]) -> None:
        self.noise.reset()
        self._new_target()

    def act(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        s = np.asarray(info["state"])
        err = reacher.wrap_angle(self.target - s[:2])
        self.age += 1
        if np.all(np.abs(err) < 0.1) or self.age > self.patience:
            self._new_target()
        return self._out(self.kp * err - self.kd * s[2:4] + self.noise())
