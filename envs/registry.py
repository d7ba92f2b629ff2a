"""Env registry: `@register_env` adds a `GoalEnv` under a short name and a gymnasium id.

    @register_env("tworoom", "wm/TwoRoom-v0", max_episode_steps=100)
    class TwoRoom(GoalEnv): ...

The gymnasium id's entry point is the class's "module:Class" string (a class defined inside a
function, which no import path names, is registered as the class itself), so `env.spec.to_json()`
and `gym.make(EnvSpec.from_json(...))` round-trip, and `gym.make(id)` ends an episode after
`max_episode_steps` (the env preset's episode_len, configs/env/).

`make(name, image_size=64, **kwargs)` accepts the short name, the `wm/...` id, the id of any
gymnasium MuJoCo env (e.g. `Hopper-v5`), or a dm_control suite task as Shimmy names it
(`dm_control/cartpole-swingup-v0`, `-v0` optional); the last two go through the generic adapters.
"""
from __future__ import annotations

from typing import Callable

import gymnasium as gym

ENVS: dict[str, type] = {}          # short name -> class
IDS: dict[str, str] = {}            # gymnasium id -> short name
GENERIC = "gym"                     # short name of the generic gymnasium-MuJoCo adapter
DMC = "dmc"                         # short name of the generic dm_control suite adapter
DMC_PREFIX = "dm_control/"


def register_env(name: str, gym_id: str, max_episode_steps: int = 200) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        if name in ENVS:
            raise ValueError(f"env {name!r} registered twice")
        ENVS[name] = cls
        IDS[gym_id] = name
        if gym_id not in gym.registry:
            importable = "<locals>" not in cls.__qualname__
            gym.register(id=gym_id, entry_point=f"{cls.__module__}:{cls.__qualname__}" if importable else cls,
                         max_episode_steps=max_episode_steps)
        return cls
    return deco


def list_envs() -> list[str]:
    return sorted(ENVS)


def parse_dmc_name(name: str) -> dict[str, str]:
    """'dm_control/cartpole-swingup[-v0]' -> {'domain': 'cartpole', 'task': 'swingup'}. Domains and
    tasks use underscores (ball_in_cup, swingup_sparse), so the first '-' splits them."""
    domain, _, task = name[len(DMC_PREFIX):].removesuffix("-v0").partition("-")
    if not domain or not task:
        raise ValueError(f"dm_control env names are '{DMC_PREFIX}<domain>-<task>', e.g. "
                         f"'{DMC_PREFIX}cartpole-swingup'; got {name!r}")
    return {"domain": domain, "task": task}


def resolve(name: str) -> tuple[str, dict]:
    """Map a user-facing env name to (short name, extra kwargs). Raises with the list of choices."""
    if name in ENVS:
        return name, {}
    if name in IDS:
        return IDS[name], {}
    low = name.lower()
    for short in ENVS:
        if short.lower() == low:
            return short, {}
    if DMC in ENVS and name.startswith(DMC_PREFIX):
        return DMC, parse_dmc_name(name)
    if GENERIC in ENVS and name in gym.registry:
        return GENERIC, {"gym_id": name}
    raise ValueError(
        f"unknown env {name!r}. Choose one of {list_envs()} (or their ids {sorted(IDS)}), "
        f"the id of an installed gymnasium MuJoCo env such as 'Hopper-v5', or a dm_control suite "
        f"task such as '{DMC_PREFIX}cartpole-swingup'."
    )


def make(name: str, **kwargs):
    """Instantiate an env by short name, `wm/...` id, or gymnasium MuJoCo id."""
    short, extra = resolve(name)
    return ENVS[short](**extra, **kwargs)
