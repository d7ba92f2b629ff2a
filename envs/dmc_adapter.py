"""Generic adapter: any dm_control suite task (cartpole-swingup, walker-walk, ...) as a GoalEnv.

    env = envs.make("dm_control/cartpole-swingup")     # Shimmy's id, `-v0` optional; resolved to "dmc"
    env = envs.make("dmc", domain="walker", task="walk", success_dims=[1, 2], success_threshold=0.2)

The env is the suite's own model, physics and task (its `before_step`, `initialize_episode` and
control step); its reward, termination and time limit are ignored. Goals are states.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import mujoco
import numpy as np

from worldmodel.envs.base import EnvInfo, StateGoalEnv, step_dm_physics
from worldmodel.envs.registry import register_env
from worldmodel.envs.render import FastRenderer


# Domains whose camera 0 shows too little at 64 px: the camera pixel-based work on the suite uses.
DEFAULT_CAMERA = {"quadruped": 2}


@register_env("dmc", "wm/DMC-v0")
class DMCSuite(StateGoalEnv):
    """Wraps a dm_control suite task: pixels from its model, state = (qpos, qvel, act).

    Actions: the task's `action_spec()` bounds, clipped, narrowed to +-`action_limit` if given
    (required where the bounds exceed MAX_ACTION_BOUND, as LQR's do). Whatever a task randomises
    outside the state (e.g. reacher's target geom) stays as the last reset left it, so a goal is
    rendered after resetting to its episode. Rendering: camera 0 (DEFAULT_CAMERA per domain) or
    `camera`, through the shared fast renderer, which also stands in for the physics' own
    contexts (a task's render-data edits at reset reach our frames). Success: StateGoalEnv's
    distance over `success_dims` below `success_threshold`."""

    def __init__(
        self,
        domain: str = "cartpole",
        task: str = "swingup",
        image_size: int = 64,
        render_mode: str = "rgb_array",
        success_dims: Sequence[int] | None = None,
        success_threshold: float = 0.1,
        action_limit: float | None = None,
        camera: str | int | None = None,
    ):
        from dm_control import suite   # lazy: importing the suite is slow

        if (domain, task) not in suite.ALL_TASKS:
            tasks = ", ".join(f"{d}-{t}" for d, t in suite.ALL_TASKS)
            raise ValueError(f"unknown dm_control suite task {domain}-{task}; choose one of: {tasks}")
        self.domain, self.task_name = domain, task
        # The task draws every random choice from this RandomState; reset reseeds it in place.
        self._task_random = np.random.RandomState(0)
        self._dmc = suite.load(domain, task, task_kwargs={"random": self._task_random})
        self.physics = self._dmc.physics
        self.model: mujoco.MjModel = self.physics.model.ptr
        self.data: mujoco.MjData = self.physics.data.ptr
        self._n_sub = max(1, round(self._dmc.control_timestep() / float(self.model.opt.timestep)))
        self._set_success(success_dims, success_threshold)
        self._set_action_limit(action_limit)
        super().__init__(image_size=image_size, render_mode=render_mode)
        if camera is None:
            camera = DEFAULT_CAMERA.get(domain, 0)
        if isinstance(camera, int) and camera >= self.model.ncam:
            camera = -1                 # a model without cameras: MuJoCo's free camera
        self._renderer = FastRenderer(self.model, image_size, camera=camera)
        self._lend_renderer()
        self._dmc.reset()

    def env_info(self) -> EnvInfo:
        spec = self._dmc.action_spec()
        return self._state_env_info(np.broadcast_to(spec.minimum, spec.shape),
                                    np.broadcast_to(spec.maximum, spec.shape),
                                    1.0 / self._dmc.control_timestep(),
                                    {"source": f"dm_control.suite {self.domain}-{self.task_name}"})

    # ---- simulation hooks --------------------------------------------------------------------
    def _reset_sim(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        self._task_random.seed(int(rng.integers(2**31 - 1)))
        self._lend_renderer()       # again: a physics reload (Physics._reload_from_data) drops it
        self._dmc.reset()           # the task's initialize_episode inside physics.reset_context()

    def _step_sim(self, action: np.ndarray) -> None:
        # The body of the suite's Environment.step without its reward, termination and time limit.
        self._dmc.task.before_step(action.astype(np.float64), self.physics)
        step_dm_physics(self.physics, self._n_sub, f"{self.domain}-{self.task_name}")
        self._dmc.task.after_step(self.physics)
        mujoco.mj_forward(self.model, self.data)   # positions for rendering match qpos exactly

    # ---- rendering contexts ------------------------------------------------------------------
    def _lend_renderer(self) -> None:
        """Install our renderer as `physics.contexts` (what a task uploads render data to).

        Left to itself, dm_control opens its own GL context on first use of `physics.contexts`:
        the upload then misses our frames (quadruped-escape drew the terrain of no episode), and
        freeing that context ends with `eglReleaseThread()`, after which every other renderer of
        the thread draws garbage on Mesa (see envs/render.py)."""
        from dm_control.mujoco.engine import Contexts

        if not isinstance(getattr(self.physics._contexts, "gl", None), _LentGL):
            self.physics._contexts = Contexts(gl=_LentGL(self._renderer), mujoco=_LentMjr(self._renderer))

    def close(self) -> None:
        self.physics._contexts = None       # lent: not dm_control's to free
        super().close()


class _LentGL:
    """`physics.contexts.gl` for a task: makes our renderer's GL context current. `free` does
    nothing: the renderer owns the context and frees it in `close()`."""

    def __init__(self, renderer: FastRenderer):
        self._renderer = renderer

    @contextlib.contextmanager
    def make_current(self) -> Iterator["_LentGL"]:
        with self._renderer.current():
            yield self

    @staticmethod
    def call(fn: Any, *args: Any) -> Any:
        return fn(*args)

    def free(self) -> None:
        pass


class _LentMjr:
    """`physics.contexts.mujoco` for a task: `.ptr` is our renderer's MjrContext."""

    def __init__(self, renderer: FastRenderer):
        self._renderer = renderer

    @property
    def ptr(self) -> mujoco.MjrContext:
        with self._renderer.current() as ctx:
            return ctx

    def free(self) -> None:
        pass
