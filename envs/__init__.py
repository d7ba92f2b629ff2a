"""Goal-reaching simulators (pixels in, states for scoring) and scripted data policies.

    from worldmodel import envs
    env = envs.make("tworoom", image_size=64)   # or "wm/TwoRoom-v0", "Hopper-v5", "dm_control/walker-walk"
    policy = envs.make_policy("expert", env, np.random.default_rng(0))

Importing this package registers every env and policy. It imports neither `worldmodel` nor
`planners`.
"""
from worldmodel.envs.base import EnvInfo, GoalEnv, SimulationDiverged
from worldmodel.envs.registry import list_envs, make, register_env, resolve

# Importing the env modules registers them (order = listing order in errors).
from worldmodel.envs import tworoom, pusht, reacher, gym_adapter, dmc_adapter  # noqa: E402,F401
from worldmodel.envs.policies import Policy, list_policies, make_policy, register_policy  # noqa: E402

__all__ = [
    "EnvInfo", "GoalEnv", "SimulationDiverged", "make", "list_envs", "register_env", "resolve",
    "make_policy", "list_policies", "register_policy", "Policy",
]
