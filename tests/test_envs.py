"""Contract tests for every registered env (yours too, named by WM_PLUGINS): shapes, seeding, state
round trip, goals, clipping."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from worldmodel import envs  # noqa: E402
from worldmodel.envs.base import StateGoalEnv, hinge_qpos_dims, quat_qpos_starts  # noqa: E402
from worldmodel.envs.registry import ENVS  # noqa: E402
from worldmodel.envs.render import FastRenderer  # noqa: E402

# (name, kwargs): every registered env; the generic adapters on two cheap gymnasium MuJoCo envs
# and three dm_control suite tasks (walker: a planar root of 3 qpos; quadruped: a free joint and
# filtered actuators, whose activations are part of the state).
SPECS = [
    ("tworoom", {}),
    ("pusht", {}),
    ("reacher", {}),
    ("gym", {"gym_id": "InvertedPendulum-v5"}),
    ("gym", {"gym_id": "Reacher-v5"}),
    ("dmc", {"domain": "cartpole", "task": "swingup"}),
    ("dmc", {"domain": "walker", "task": "walk"}),
    ("dmc", {"domain": "quadruped", "task": "walk"}),
]
# Your own envs too: `WM_PLUGINS=my_envs python -m pytest tests/test_envs.py` (my_envs on PYTHONPATH)
# adds every env its modules register, with default kwargs.
from worldmodel import plugins  # noqa: E402

plugins.load()
SPECS += [(name, {}) for name in envs.list_envs() if name not in {n for n, _ in SPECS}]
IDS = [kw.get("gym_id") or (f"{kw['domain']}-{kw['task']}" if "domain" in kw else name)
       for name, kw in SPECS]


def test_specs_cover_every_registered_env():
    assert {name for name, _ in SPECS} == set(envs.list_envs())


@pytest.fixture(scope="module")
def made():
    cache: dict[str, envs.GoalEnv] = {}
    yield cache
    for env in cache.values():
        env.close()


@pytest.fixture(params=range(len(SPECS)), ids=IDS)
def env(request, made):
    name, kwargs = SPECS[request.param]
    key = IDS[request.param]
    if key not in made:
        made[key] = envs.make(name, image_size=64, **kwargs)
    return made[key]


def _actions(env, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(env.action_space.low, env.action_space.high, (n,) + env.action_space.shape)


def test_rollout_shapes_and_info(env):
    info_meta = env.env_info()
    obs, info = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.action_space.shape == info_meta.action_low.shape
    for a in _actions(env, 10, 0):
        obs, reward, terminated, truncated, info = env.step(a)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
        assert not terminated and not truncated
        assert info["state"].dtype == np.float64
        assert info["state"].shape == (len(info_meta.state_names),)
        assert info["proprio"].dtype == np.float32
        assert info["proprio"].shape == (len(info_meta.proprio_names),)
        assert np.all(np.isfinite(info["state"]))
    assert obs.std() > 0, "frame is blank"
    meta = info_meta.to_json()
    json.dumps(meta)
    assert meta["control_hz"] > 0 and meta["success"]
    pose, angles = meta["pose_dims"], meta["angle_dims"]       # what the state probe reads
    assert pose and set(angles) <= set(pose) <= set(range(len(info_meta.state_names)))
    names = [info_meta.state_names[d] for d in pose]
    assert not [n for n in names if n.startswith("qvel:") or n.endswith("_vel")
                or n.split("_")[-1] in ("vx", "vy", "omega")], "a velocity among the pose dims"


def test_seeded_reset_is_deterministic(env):
    acts = _actions(env, 5, 1)
    runs = []
    for _ in range(2):
        obs, info = env.reset(seed=7)
        frames, states = [obs], [info["state"]]
        for a in acts:
            obs, _, _, _, info = env.step(a)
            frames.append(obs)
            states.append(info["state"])
        runs.append((np.stack(frames), np.stack(states)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    _, other = env.reset(seed=8)
    assert not np.array_equal(other["state"], runs[0][1][0]), "a different seed gave the same start"


def test_state_round_trip_and_goal_image(env):
    env.reset(seed=1)
    for a in _actions(env, 5, 2):
        goal_obs, _, _, _, info = env.step(a)
    goal = env.get_state()
    np.testing.assert_array_equal(goal, info["state"])
    for a in _actions(env, 5, 3):
        env.step(a)
    here = env.get_state()
    img = env.goal_image(goal)
    np.testing.assert_array_equal(env.get_state(), here)       # goal_image leaves the state alone
    env.set_state(goal)
    np.testing.assert_array_equal(env.get_state(), goal)       # exact round trip
    np.testing.assert_array_equal(env.render(), img)           # same camera for goals
    np.testing.assert_array_equal(img, goal_obs)               # image is a function of the state
    obs, info = env.reset(seed=0, options={"state": goal})
    np.testing.assert_array_equal(info["state"], goal)


def test_success_at_goal_not_far_away(env):
    env.reset(seed=2)
    goal = env.get_state()
    assert env.is_success(goal, goal) and env.goal_error(goal, goal) == 0.0
    far = goal.copy()
    far[0] += 1.0          # 1 m or 1 rad away on the first position coordinate
    assert not env.is_success(far, goal) and env.goal_error(far, goal) >= 1.0
    near = goal.copy()
    near[0] += 1e-4        # well inside every tolerance
    assert env.is_success(near, goal) and 0.0 < env.goal_error(near, goal) < 1.0
    for s in (goal, far, near):   # the criterion's errors, one by one: goal_error is the largest
        errs = env.goal_errors(s, goal)
        assert errs.ndim == 1 and (errs >= 0).all() and errs.max() == pytest.approx(env.goal_error(s, goal))
        assert len(env.goal_error_names) == len(errs)          # each part named (wm eval records them)


GENERIC = [i for i, (name, _) in enumerate(SPECS) if name in ("gym", "dmc")]


@pytest.mark.parametrize("spec", [SPECS[i] for i in GENERIC] + [("gym", {"gym_id": "Ant-v5"})],
                         ids=[IDS[i] for i in GENERIC] + ["Ant-v5"])  # Ant: a free joint's quaternion
def test_generic_adapters_score_poses_not_coordinates(spec):
    """A hinge angle whole turns away, or a quaternion of the other sign, is the same pose: success
    at distance 0. Half a turn on a hinge is not."""
    env = envs.make(spec[0], image_size=64, **spec[1])
    assert isinstance(env, StateGoalEnv)
    env.reset(seed=3)
    goal = env.get_state()
    same = goal.copy()
    hinges = list(hinge_qpos_dims(env.model))
    same[hinges] += 2 * np.pi * np.arange(-2, len(hinges) - 2)      # -2, -1, 0, 1, ... turns
    for a in quat_qpos_starts(env.model):
        same[a:a + 4] *= -1.0
    assert env.goal_error(same, goal) < 1e-9 and env.goal_error(goal, same) < 1e-9
    assert env.is_success(same, goal)
    half = goal.copy()
    half[hinges[0]] += np.pi
    assert env.goal_error(half, goal) == pytest.approx(np.pi / env.success_threshold)
    env.close()


def test_actions_are_clipped_and_nan_refused(env):
    low, high = env.action_space.low, env.action_space.high
    big = np.where(np.arange(low.size) % 2 == 0, high * 10 + 1, low * 10 - 1)
    np.testing.assert_array_equal(env.clip_action(big), np.clip(big, low, high).astype(np.float32))
    env.reset(seed=3)
    start = env.get_state()
    env.step(big)
    after_big = env.get_state()
    env.set_state(start)
    env.step(np.clip(big, low, high))
    np.testing.assert_array_equal(env.get_state(), after_big)
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full(low.shape, np.nan))


def test_a_step_that_blows_up_the_physics_raises(env):
    """MuJoCo resets a diverged simulation to the model's initial pose; step must say so
    (SimulationDiverged) rather than return that jump as the next state."""
    env.reset(seed=0)
    bad = env.get_state()
    bad[0] = 1e12                      # beyond MuJoCo's mjMAXVAL: a bad qpos at the next step
    env.set_state(bad)
    with pytest.raises(envs.SimulationDiverged, match="diverged"):
        env.step(np.zeros(env.action_space.shape, np.float32))
    env.reset(seed=0)
    env.step(np.zeros(env.action_space.shape, np.float32))        # counted per step: fine again


def test_sim_rollout_replays_step_exactly(env):
    """The batched simulator replay (envs.sim_rollout, the oracles' dynamics) is env.step itself
    (to the contact solver's tolerance): from two different states, out-of-bounds actions clipped
    as step clips them."""
    from worldmodel.envs.sim_rollout import SimRollout

    sim = SimRollout(env, nthread=2)            # refuses an env whose replay differs from step
    starts, refs, acts = [], [], []
    for seed in (5, 6):
        env.reset(seed=seed)
        a = 1.5 * _actions(env, 6, seed)        # half of them outside the bounds
        starts.append(env.get_state())
        refs.append([env.step(x)[4]["state"] for x in a])
        acts.append(a)
    got = sim(np.stack(starts), np.stack(acts))                       # (2, 6, S)
    assert got.shape == (2, 6, starts[0].shape[0])
    refs = np.asarray(refs)
    assert (np.abs(got - refs) / (1 + np.abs(refs))).max() < 1e-5   # the solver's warm start: ~1e-8


def test_sim_rollout_refuses_a_replay_that_is_not_step(made, monkeypatch):
    from worldmodel.envs.sim_rollout import SimRollout

    env = made.setdefault("pusht", envs.make("pusht", image_size=64))
    env.reset(seed=0)
    monkeypatch.setattr(env, "physics_controls", lambda a: 0.5 * np.repeat(np.asarray(a), 10, axis=-2))
    with pytest.raises(ValueError, match="physics_controls"):
        SimRollout(env)
    with pytest.raises(TypeError, match="MuJoCo env"):
        SimRollout(object())


def test_unknown_env_lists_choices():
    with pytest.raises(ValueError) as err:
        envs.make("no-such-env")
    for name in envs.list_envs():
        assert name in str(err.value)


def test_ids_and_gym_names_resolve():
    assert envs.resolve("wm/PushT-v0") == ("pusht", {})
    assert envs.resolve("TwoRoom") == ("tworoom", {})
    assert envs.resolve("Hopper-v5") == ("gym", {"gym_id": "Hopper-v5"})
    for name in ("dm_control/ball_in_cup-catch-v0", "dm_control/ball_in_cup-catch"):
        assert envs.resolve(name) == ("dmc", {"domain": "ball_in_cup", "task": "catch"})
    assert set(ENVS) == set(envs.list_envs())


@pytest.mark.parametrize("name, match", [
    ("dm_control/cartpole", "dm_control/<domain>-<task>"),         # no task
    ("dm_control/cartpole-jump", "cartpole-swingup"),              # not a suite task: lists them
])
def test_bad_dm_control_names_are_refused(name, match):
    with pytest.raises(ValueError, match=match):
        envs.make(name)


def test_dm_control_adapter_is_the_suite_task(made):
    """Bounds and control rate are the suite's; state names come from its joints; camera 0."""
    env = made.get("walker-walk") or envs.make("dmc", domain="walker", task="walk")
    made["walker-walk"] = env
    meta = env.env_info()
    assert meta.control_hz == 40.0                          # walker: 0.025 s control step
    np.testing.assert_array_equal(meta.action_low, -np.ones(6, np.float32))
    assert meta.state_names[:3] == ("qpos:rootz", "qpos:rootx", "qpos:rooty")
    assert len(meta.state_names) == 18 and meta.extra["source"] == "dm_control.suite walker-walk"
    env.reset(seed=0)
    for _ in range(200):                                    # past nothing: episodes never end
        env.step(env.action_space.sample())


def test_pusht_success_is_one_norm_over_agent_and_block_positions(made):
    """LeWM / DINO-WM's PushT.eval_state: ||(agent, block) - goal|| < 20 px and angle < pi/9. Errors
    of 18 px on the agent and 18 px on the block each pass 20 px, but together they make 25 px."""
    from worldmodel.envs.pusht import POS_TOL

    env = made["pusht"]
    env.reset(seed=0)
    goal = env.get_state()
    s = goal.copy()
    s[0] += 0.9 * POS_TOL                                            # agent x: 18 px
    assert env.is_success(s, goal)
    s[3] += 0.9 * POS_TOL                                            # block y: 18 px more
    assert not env.is_success(s, goal) and env.goal_error(s, goal) == pytest.approx(0.9 * 2 ** 0.5)


def test_tworoom_crossed_door_metric(made):
    env = made.get("tworoom") or envs.make("tworoom")
    made["tworoom"] = env
    stay = np.array([[-0.5, 0.1, 0, 0], [-0.3, 0.0, 0, 0]])
    cross = np.array([[-0.5, 0.0, 0, 0], [0.0, 0.0, 0, 0], [0.4, 0.0, 0, 0]])
    assert env.episode_metrics(stay) == {"crossed_door": 0.0}
    assert env.episode_metrics(cross) == {"crossed_door": 1.0}


def test_tworoom_walls_block_the_agent(made):
    env = made.get("tworoom") or envs.make("tworoom")
    made["tworoom"] = env
    env.reset(seed=0, options={"state": np.array([-0.5, 0.7, 0.0, 0.0])})
    for _ in range(30):                                # push right, into the dividing wall
        env.step(np.array([1.0, 0.0]))
    x = env.get_state()[0]
    assert -0.2 < x < -0.05, f"agent should rest against the wall, got x={x}"


def test_pusht_block_moved_metric_and_contact(made):
    env = made.get("pusht") or envs.make("pusht")
    made["pusht"] = env
    s0 = np.zeros(10)
    s0[0:2] = (-0.3, 0.0)                              # pusher left of a block at the origin
    still = np.stack([s0, s0])
    assert env.episode_metrics(still) == {"block_moved": 0.0}
    env.reset(seed=0, options={"state": s0})
    states = [env.get_state()]
    for _ in range(25):                                # drive right into the block
        states.append(env.step(np.array([1.0, 0.0]))[4]["state"])
    states = np.stack(states)
    assert states[-1, 2] > 0.05, "the pusher should have pushed the block to the right"
    assert env.episode_metrics(states) == {"block_moved": 1.0}


def test_interpreter_exit_is_quiet_with_envs_of_two_render_stacks():
    """Exiting with a MuJoCo env and a dm_control env open frees every GL context without errors.

    dm_control registers its own EGL teardown at import (lazily, when Reacher is made); the renderer
    must still free its contexts first.
    """
    code = ("import envs\n"
            "a = envs.make('tworoom', image_size=32); b = envs.make('reacher', image_size=32)\n"
            "a.reset(seed=0); b.reset(seed=0); a.render(); b.render()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert "Error" not in r.stderr and "Exception" not in r.stderr, r.stderr


def test_dm_control_task_uploads_into_our_renderer_and_opens_no_gl_context_of_its_own():
    """quadruped-escape rewrites its terrain heightfield at every reset and uploads it to
    `physics.contexts`. Frames must show the terrain the physics uses (equal to a renderer made
    after the reset), and that upload must not open a second GL context: freeing one releases the
    thread's EGL state, after which every other renderer in the thread draws garbage on Mesa."""
    other = envs.make("dm_control/cartpole-swingup", image_size=64)
    other.reset(seed=0)
    before = other.render()
    env = envs.make("dm_control/quadruped-escape", image_size=64, camera=0)
    for seed in (1, 2):
        env.reset(seed=seed)
        fresh = FastRenderer(env.model, 64, camera=0)
        np.testing.assert_array_equal(env.render(), fresh.render(env.data))
        fresh.close()
    env.close()
    del env, fresh
    gc.collect()                      # dm_control frees what its physics opened
    np.testing.assert_array_equal(other.render(), before)
    other.close()


def test_effectively_unbounded_actions_are_refused_unless_limited():
    """dm_control's LQR declares +-1e10: the adapter asks for action_limit and then applies it."""
    with pytest.raises(ValueError, match=r"action bounds reach 1e\+10.*action_limit"):
        envs.make("dm_control/lqr-lqr_2_1")
    env = envs.make("dm_control/lqr-lqr_2_1", image_size=16, action_limit=2.0)
    np.testing.assert_array_equal(env.action_space.high, [2.0])
    env.reset(seed=0)
    before = env.get_state()
    env.step(np.array([1e9], np.float32))                 # clipped to 2
    env.set_state(before)
    _, _, _, _, info = env.step(np.array([2.0], np.float32))
    after_limit = info["state"]
    env.set_state(before)
    _, _, _, _, info = env.step(np.array([1e9], np.float32))
    np.testing.assert_array_equal(info["state"], after_limit)
    env.close()


def _every_adapter_task() -> list[str]:
    from dm_control import suite
    gym_ids = sorted(i for i, spec in gym.registry.items()
                     if i.endswith("-v5") and "mujoco" in str(spec.entry_point))
    return [f"dm_control/{d}-{t}" for d, t in suite.ALL_TASKS] + gym_ids


@pytest.mark.parametrize("name", _every_adapter_task())
def test_every_suite_task_and_gymnasium_mujoco_env_keeps_the_contract(name):
    """Every task the generic adapters promise (51 dm_control suite tasks, gymnasium's MuJoCo
    envs): a state that round-trips and renders as the observation it came with, and a simulator
    replay equal to `step` (SimRollout checks itself on construction)."""
    from worldmodel.envs.sim_rollout import SimRollout

    env = envs.make(name, image_size=32, **({"action_limit": 1.0} if "lqr" in name else {}))
    env.reset(seed=1)
    for a in _actions(env, 4, 0):
        obs, _, _, _, info = env.step(a)
    goal = env.get_state()
    assert goal.shape == (len(env.env_info().state_names),)
    for a in _actions(env, 3, 1):
        env.step(a)
    np.testing.assert_array_equal(env.goal_image(goal), obs)
    env.set_state(goal)
    np.testing.assert_array_equal(env.get_state(), goal)
    assert env.goal_error(goal, goal) == 0.0
    SimRollout(env, nthread=1, verify_steps=5)
    env.close()
