"""Batched open-loop rollouts of an env's own simulator: the exact dynamics, for oracles.

`SimRollout` runs many candidate action sequences from many start states through MuJoCo's
multithreaded `mujoco.rollout`, with the env's own action-to-control mapping, so a sampling planner
can plan on the true dynamics: what the planner and protocol achieve when prediction is perfect
(benchmarks/oracle_ceiling.py).

    sim = SimRollout(envs.make("pusht"))        # checks itself against env.step first
    states = sim(start_states, actions)         # (N, S), (N, T, A) -> (N, T, S)
"""
from __future__ import annotations

import os

import mujoco
import numpy as np
from mujoco import rollout as mj_rollout

from worldmodel.envs.base import MujocoGoalEnv, state_size

_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS     # time, qpos, qvel, act, plugin state


class SimRollout:
    """Replays (N, T, A) env actions from (N, S) env states on `nthread` MuJoCo threads.

    The constructor refuses an env whose replay differs from `env.step` by more than `tol`
    (|difference| / (1 + |value|)): an oracle of something else. Exact equality is not expected
    where contacts are active: MuJoCo warm-starts its solver from the previous step's
    accelerations, which an env state does not carry."""

    def __init__(self, env: MujocoGoalEnv, nthread: int | None = None, verify_steps: int = 20,
                 tol: float = 1e-5):
        if not isinstance(env, MujocoGoalEnv):
            raise TypeError(f"SimRollout needs a MuJoCo env (envs.base.MujocoGoalEnv), got "
                            f"{type(env).__name__}")
        self.env, self.model = env, env.model
        self.size = state_size(env.model)      # qpos, qvel, act: the physics state after time
        self.n_sub = env.physics_controls(np.zeros((1, env.action_space.shape[0]))).shape[0]
        self._low, self._high = env.action_space.low, env.action_space.high
        self.nthread = int(nthread or os.cpu_count() or 1)
        self._datas = [mujoco.MjData(self.model) for _ in range(self.nthread)]
        self._scratch = mujoco.MjData(self.model)
        self.max_deviation = self.verify(verify_steps)
        if not self.max_deviation <= tol:
            raise ValueError(f"{type(env).__name__}: replaying actions through mujoco.rollout "
                             f"differs from env.step by {self.max_deviation:.3g} (> {tol:g}); its "
                             "step does more than write ctrl and step the physics, so override "
                             "physics_controls() to say what it writes")

    def _full_states(self, states: np.ndarray) -> np.ndarray:
        """(N, nq + nv + na) env states -> (N, nfull) MuJoCo physics states (time from the env)."""
        d = self._scratch
        mujoco.mj_copyData(d, self.model, self.env.data)
        full = np.zeros(mujoco.mj_stateSize(self.model, _SPEC))
        mujoco.mj_getState(self.model, d, full, _SPEC)
        out = np.repeat(full[None], len(states), axis=0)                   # (N, nfull)
        out[:, 1:1 + self.size] = states                                   # after the time entry
        return out

    def __call__(self, states: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Start states (N, S) and env actions (N, T, A) (clipped to the bounds here, as `step`
        does) -> the state after each env step (N, T, S); S = nq + nv + na."""
        states = np.asarray(states, dtype=np.float64)
        actions = np.asarray(actions, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != self.size:
            raise ValueError(f"states must be (N, {self.size}), got {states.shape}")
        if actions.ndim != 3 or actions.shape[0] != states.shape[0] or \
                actions.shape[2] != self._low.shape[0]:
            raise ValueError(f"actions must be (N={states.shape[0]}, T, {self._low.shape[0]}), "
                             f"got {actions.shape}")
        ctrl = self.env.physics_controls(np.clip(actions, self._low, self._high))  # (N, T*n_sub, nu)
        full, _ = mj_rollout.rollout(self.model, self._datas, self._full_states(states), ctrl)
        every = full[:, self.n_sub - 1::self.n_sub]                         # (N, T, nfull)
        return every[..., 1:1 + self.size].copy()                           # (N, T, S)

    def verify(self, steps: int, seed: int = 0) -> float:
        """Largest state difference |replay - step| / (1 + |step|) between this replay and
        `env.step` over `steps` random actions from the env's current state; leaves the env's
        state as it found it."""
        env = self.env
        saved = env.get_state()
        rng = np.random.default_rng(seed)
        acts = rng.uniform(self._low, self._high, (steps, self._low.shape[0])).astype(np.float32)
        ref = []
        for a in acts:
            env.step(a)
            ref.append(env.get_state())
        env.set_state(saved)
        got = self(saved[None], acts[None])[0]                              # (T, S)
        ref = np.asarray(ref)
        return float((np.abs(got - ref) / (1 + np.abs(ref))).max())
