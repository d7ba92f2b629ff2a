"""One episode of a data policy in a simulator, seeded by (seed, episode index) alone.

`wm collect` records these episodes and `wm eval` draws its held-out tasks from them, so both use
this one definition of an episode and of its seed.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def episode_seed(seed: int, index: int) -> int:
    """Seed of global episode `index`: a function of (seed, index) only, so worker count and
    sharding never change the data."""
    return int(np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0] >> 1)


def rollout(env: Any, policy_name: str, seed: int, index: int, length: int,
            policy_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """One episode of up to `length` rows of policy `policy_name` (built with `policy_kwargs`). Row t:
    observation/state at step t and the (clipped) action applied at t; the last row's action is NaN.
    Ends early if the env terminates, or at the last valid row if a step makes the physics diverge
    (`"diverged"`: True)."""
    from worldmodel import envs

    s = episode_seed(seed, index)
    obs, info = env.reset(seed=s)
    policy = envs.make_policy(policy_name, env, np.random.default_rng([s, 1]), **(policy_kwargs or {}))
    policy.reset(obs, info)
    A = env.action_space.shape[0]
    st, pr = np.asarray(info["state"]), np.asarray(info["proprio"])
    pixels = np.empty((length, *obs.shape), np.uint8)                 # (L, H, W, 3)
    action = np.full((length, A), np.nan, np.float32)                 # (L, A)
    state = np.empty((length, st.shape[0]), np.float64)               # (L, S)
    proprio = np.empty((length, pr.shape[0]), np.float32)             # (L, P)
    n, diverged = length, False
    for t in range(length):
        pixels[t], state[t], proprio[t] = obs, info["state"], info["proprio"]
        if t == length - 1:
            break
        a = env.clip_action(policy.act(obs, info))
        try:
            obs, _, terminated, truncated, info = env.step(a)
        except envs.SimulationDiverged:
            n, diverged = t + 1, True           # row t stays, with no action: nothing followed it
            break
        action[t] = a
        if terminated or truncated:
            pixels[t + 1], state[t + 1], proprio[t + 1] = obs, info["state"], info["proprio"]
            n = t + 2
            break
    return {"pixels": pixels[:n], "action": action[:n], "state": state[:n], "proprio": proprio[:n],
            "ep_index": index, "ep_seed": s, "diverged": diverged}
