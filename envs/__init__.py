"""Goal-reaching simulators (pixels in, states for scoring) and scripted data policies.

    from worldmodel import envs
    env = envs.make("tworoom", image_size=64)   # or "wm/TwoRoom-v0", "Hopper-v5", "dm_control/walker-walk"
    policy = envs.make_policy("expert", env, np.random.default_rng(0))

Importing this package registers every env and policy. It imports neither `worldmodel` nor
`planners`. On Linux it first picks the headless EGL renderer (Mesa on a CPU, the NVIDIA driver on
a GPU) unless MUJOCO_GL says otherwise: mujoco reads MUJOCO_GL once, when it is first imported, so
this must happen before; a program that imported mujoco itself first keeps mujoco's choice.
"""
import os as _os
import sys as _sys

if _sys.platform.startswith("linux") and "mujoco" not in _sys.modules:
    _os.environ.setdefault("MUJOCO_GL", "egl")

from worldmodel.envs.base import EnvInfo, GoalEnv, SimulationDiverged  # noqa: E402
from worldmodel.envs.registry import list_envs, make, register_env, resolve  # noqa: E402

# Importing the env modules registers them (order = listing order in errors).
from worldmodel.envs import tworoom, pusht, reacher, gym_adapter, dmc_adapter  # noqa: E402,F401
from worldmodel.envs.policies import Policy, list_policies, make_policy, register_policy  # noqa: E402

__all__ = [
    "EnvInfo", "GoalEnv", "SimulationDiverged", "make", "list_envs", "register_env", "resolve",
    "make_policy", "list_policies", "register_policy", "Policy",
]
