"""MPC controller and control loop against an analytic world: a point with z' = z + dt * a.

The energy factory below plays the role of worldmodel.model.energy.GoalEnergy: it receives the goal and
the observation history through the GoalEnergyLike protocol and rolls the exact dynamics out.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from worldmodel.planners import make_planner
from worldmodel.planners.loop import ControlLoop
from worldmodel.planners.mpc import MPCController

DT = 0.1
LOW, HIGH = np.array([-1.0, -1.0]), np.array([1.0, 1.0])


class PointEnv:
    """gymnasium-style: obs = position (2,) float32; action = velocity, clipped to [-1, 1]."""

    def __init__(self, start=(0.0, 0.0)):
        self.start = np.asarray(start, np.float32)

    def reset(self, seed=None):
        self.pos = self.start.copy()
        return self.pos.copy(), {}

    def step(self, action):
        self.pos = (self.pos + DT * np.clip(action, LOW, HIGH)).astype(np.float32)
        return self.pos.copy(), 0.0, False, False, {"pos": self.pos.copy()}


class LinearWorld:
    """GoalEnergyLike for the point: also checks the history the controller hands over."""

    def __init__(self, frameskip: int, history: int, delay: float = 0.0):
        self.fs, self.history, self.delay = frameskip, history, delay
        self.calls: list[tuple[int, int]] = []    # (T, S) per set_observation / call

    def set_goal(self, goal_obs):
        assert goal_obs.ndim == 2                                          # (B, 2)
        self.goal = torch.as_tensor(goal_obs)

    def set_observation(self, obs_history, past_actions):
        B, T = obs_history.shape[:2]
        assert 1 <= T <= self.history and past_actions.shape == (B, T - 1, self.fs * 2)
        assert past_actions.dtype == np.float32
        # each past chunk must explain the motion between consecutive history frames
        for j in range(T - 1):
            moved = obs_history[:, j + 1] - obs_history[:, j]
            np.testing.assert_allclose(moved, DT * past_actions[:, j].reshape(B, self.fs, 2).sum(1),
                                       atol=1e-5)
        self.z = torch.as_tensor(obs_history[:, -1])                       # (B, 2)
        self.calls.append((T, 0))

    def __call__(self, actions):                                           # (B, S, H, fs*2)
        if self.delay:
            time.sleep(self.delay)
        B, S, H, _ = actions.shape
        steps = actions.reshape(B, S, H * self.fs, 2)
        final = self.z[:, None] + DT * steps.sum(2)                        # (B, S, 2)
        return (final - self.goal[:, None]).pow(2).sum(-1)                 # (B, S)


def controller(fs=2, history=3, planner="cem", **kw) -> MPCController:
    plan = make_planner(planner, samples=64, iterations=6, elites=8, seed=0)
    return MPCController(plan, LinearWorld(fs, history, kw.pop("delay", 0.0)), (LOW, HIGH),
                         horizon=3, receding_horizon=2, frameskip=fs, history=history, **kw)


def drive(ctrl, goal, steps=40, start=(0.0, 0.0)):
    env = PointEnv(start)
    obs, _ = env.reset()
    ctrl.reset(np.asarray(goal, np.float32))
    acts = []
    for _ in range(steps):
        a = ctrl.act(obs)
        acts.append(a)
        obs, *_ = env.step(a)
    return obs, np.stack(acts)


def test_drives_point_to_goal_with_history():
    ctrl = controller()
    goal = [0.8, -0.6]
    final, acts = drive(ctrl, goal)
    assert np.linalg.norm(final - goal) < 0.05
    assert acts.dtype == np.float32 and acts.shape == (40, 2)
    assert (acts >= LOW).all() and (acts <= HIGH).all()
    s = ctrl.stats()
    assert s["plans"] == 10 and s["steps"] == 40       # replans every 2 chunks x 2 env steps
    assert s["latency_ms_p50"] > 0 and s["deadline_misses"] == 0
    assert max(T for T, _ in ctrl.energy.calls) == 3   # the history filled up to 3 frames


def test_history_survives_a_caller_that_reuses_its_buffers():
    """A driver that writes each frame into one buffer, and changes the action it was handed, must not
    rewrite the controller's history (LinearWorld checks every frame against the actions between)."""
    ctrl = controller(fs=2, history=3)
    env = PointEnv()
    buf, _ = env.reset()
    ctrl.reset(np.asarray([0.8, -0.6], np.float32))
    for _ in range(20):
        a = ctrl.act(buf)
        obs, *_ = env.step(a)
        a *= 100.0                                      # the caller's copy, not the controller's
        buf[:] = obs                                    # the same buffer, new contents
    assert max(T for T, _ in ctrl.energy.calls) == 3 and ctrl.stats()["plans"] == 5


def test_unreachable_goal_actions_stay_in_bounds():
    _, acts = drive(controller(planner="mppi"), [50.0, -50.0], steps=12)
    assert (acts >= LOW).all() and (acts <= HIGH).all()
    np.testing.assert_allclose(acts[-4:].mean(0), [1.0, -1.0], atol=0.15)


def test_bad_inputs_have_clear_errors():
    ctrl = controller()
    with pytest.raises(RuntimeError, match="reset"):
        ctrl.act(np.zeros(2, np.float32))
    ctrl.reset(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="shape"):
        ctrl.act(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        ctrl.act(np.zeros(2, np.float64))
    with pytest.raises(ValueError, match="NaN"):
        ctrl.act(np.array([0.0, np.nan], np.float32))
    with pytest.raises(TypeError, match="numpy"):
        ctrl.act([0.0, 0.0])
    with pytest.raises(ValueError, match="NaN"):
        ctrl.reset(np.array([np.inf, 0.0], np.float32))
    plan = make_planner("cem", samples=16, elites=4)
    with pytest.raises(ValueError, match="receding_horizon"):
        MPCController(plan, LinearWorld(1, 1), (LOW, HIGH), horizon=2, receding_horizon=3)
    with pytest.raises(ValueError, match="action_dim"):
        MPCController(plan, LinearWorld(1, 1), (LOW, HIGH), action_dim=3)
    with pytest.raises(ValueError, match="async_lead"):
        MPCController(plan, LinearWorld(1, 1), (LOW, HIGH), horizon=2, receding_horizon=1,
                      async_lead=1)
    with pytest.raises(TypeError, match="GoalEnergyLike"):
        MPCController(plan, object(), (LOW, HIGH))


def test_warm_start_shifts_previous_mean():
    ctrl = controller(fs=2, history=1)
    seen, means = [], []
    solve = ctrl.planner.solve

    def spy(*a, **kw):
        seen.append(kw["init_mean"])
        res = solve(*a, **kw)
        means.append(res.mean.clone())
        return res

    ctrl.planner.solve = spy
    drive(ctrl, [0.5, 0.5], steps=5)
    assert seen[0] is None and len(seen) == 2
    # the second plan starts 4 env steps (2 chunks) later: chunk 0 of its initial mean is chunk 2
    # of the first plan's mean, the rest is the box centre (0)
    init = seen[1]                                                   # (1, H=3, fs*A=4)
    assert init.shape == (1, 3, 4)
    assert torch.equal(init[:, 0], means[0][:, 2])
    assert torch.equal(init[:, 1:], torch.zeros(1, 2, 4))


def test_async_mode_same_kind_of_actions_and_reaches_goal():
    with controller(async_lead=1) as ctrl:
        goal = [-0.7, 0.4]
        final, acts = drive(ctrl, goal, steps=48)
        s = ctrl.stats()
    assert np.linalg.norm(final - goal) < 0.08
    assert acts.shape == (48, 2) and acts.dtype == np.float32
    assert (acts >= LOW).all() and (acts <= HIGH).all()
    # the first plan yields 4 actions, each later one 4 - async_lead = 3
    assert s["plans"] == 1 + int(np.ceil((48 - 4) / 3))


def test_async_plans_start_every_candidate_with_the_committed_actions():
    """With async_lead=k the next plan is made while k queued actions still execute: the energy
    must score every candidate as if those k actions come first (the robot will do them)."""
    firsts = []

    class Recording(LinearWorld):
        def __call__(self, actions):                                       # (B, S, H, fs*2)
            firsts.append(actions[0, :, 0, :2].clone())                    # (S, 2): first env action
            return super().__call__(actions)

    plan = make_planner("cem", samples=64, iterations=6, elites=8, seed=0)
    with MPCController(plan, Recording(2, 3), (LOW, HIGH), horizon=3, receding_horizon=2, frameskip=2,
                       history=3, async_lead=1) as ctrl:
        final, acts = drive(ctrl, [-0.7, 0.4], steps=20)
    cold, warm = firsts[:6], firsts[6:]                   # the first plan (6 iterations) is not async
    assert all(len(torch.unique(f, dim=0)) > 1 for f in cold)
    assert len(warm) == 6 * 6                             # 6 async plans in 20 steps (4, then 3 each)
    executed = torch.as_tensor(acts)
    for f in warm:
        assert (f == f[0]).all()                          # one committed action shared by all
        assert (executed == f[0]).all(1).any()            # ... and it is one the robot executed
    committed = [f[0] for f in warm[::6]]                 # in order: the action at step 3, 6, 9, ...
    torch.testing.assert_close(torch.stack(committed), executed[3:3 + 3 * len(committed):3])


def test_async_stalls_and_deadline_misses_are_counted():
    ctrl = controller(fs=1, history=1, async_lead=0, delay=0.01, time_budget_s=0.03)
    drive(ctrl, [0.5, 0.5], steps=6)
    s = ctrl.stats()
    assert s["budget_cut_plans"] == s["plans"] >= 2                 # the budget cut every plan short ...
    assert s["async_stalls"] >= 1 and s["async_stall_s"] > 0
    assert s["mean_iterations"] < 6
    ctrl.close()
    # ... a miss is a plan longer than the budget: one iteration of 50 ms overruns 30 ms, uncut
    plan = make_planner("cem", samples=8, iterations=1, elites=2)
    slow = MPCController(plan, LinearWorld(1, 1, delay=0.05), (LOW, HIGH), horizon=3, receding_horizon=2,
                         time_budget_s=0.03)
    drive(slow, [0.5, 0.5], steps=4)
    s = slow.stats()
    assert s["deadline_misses"] == s["plans"] == 2 and s["budget_cut_plans"] == 0


def test_warmup_leaves_a_seeded_episode_as_it_would_be_without_it():
    acts = []
    for warm in (False, True):
        ctrl = controller()
        ctrl.reset(np.asarray([0.5, -0.5], np.float32), seed=3)
        if warm:
            ctrl.warmup(2)
        acts.append([ctrl.act(np.zeros(2, np.float32)) for _ in range(3)])
    np.testing.assert_array_equal(acts[0], acts[1])


def test_batched_controller_and_plan():
    ctrl = controller(batch=2, history=2)
    goals = np.array([[0.5, 0.5], [-0.5, 0.2]], np.float32)
    ctrl.reset(goals)
    res = ctrl.plan(np.zeros((2, 2), np.float32))
    assert res.actions.shape == (2, 3, 4)
    ctrl.warmup(1)
    assert ctrl.stats()["plans"] == 1               # warmup leaves statistics alone
    a = ctrl.act(np.zeros((2, 2), np.float32))
    assert a.shape == (2, 2)
    np.testing.assert_array_less(0.0, a[0])         # heads toward (+, +)
    assert a[1, 0] < 0


def test_warmup_covers_every_history_length_for_a_compiled_energy():
    """An energy that says it is compiled (GoalEnergy(compile=True)) compiles once per history
    length: warmup plans at each of 1..history, cold and warm, so no episode compiles; otherwise
    warmup plans on the full history only."""
    ctrl = controller(history=3)
    ctrl.reset(np.zeros(2, np.float32))
    ctrl.warmup(1)
    assert [t for t, _ in ctrl.energy.calls] == [3]
    ctrl.energy.compiled, ctrl.energy.calls = True, []
    ctrl.warmup(2)
    assert [t for t, _ in ctrl.energy.calls] == [1, 1, 2, 2, 3, 3]
    assert ctrl.stats()["plans"] == 0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, dt):
        self.now += dt


def test_control_loop_rate_and_overruns_with_callbacks():
    clock, env = FakeClock(), PointEnv()
    obs, _ = env.reset()
    state = {"obs": obs, "n": 0}

    def send(a):
        state["n"] += 1
        if state["n"] % 4 == 0:
            clock.now += 0.25                       # a slow actuator: 2.5 periods late
        state["obs"], *_ = env.step(a)

    loop = ControlLoop(controller(), hz=10, get_obs=lambda: state["obs"], send_action=send,
                       clock=clock, sleep=clock.sleep)
    rep = loop.run(np.array([0.3, 0.3], np.float32), max_steps=12)
    assert rep.steps == 12 and rep.overruns == 3 and rep.hz_target == 10
    assert 0 < rep.hz_achieved < 10


def test_control_loop_holds_every_command_a_period_even_after_an_overrun():
    clock, env = FakeClock(), PointEnv()
    obs, _ = env.reset()
    state, sent_at = {"obs": obs}, []

    def send(a):
        if len(sent_at) == 3:
            clock.now += 0.25                       # this command goes out 2.5 periods late
        sent_at.append(clock.now)
        state["obs"], *_ = env.step(a)

    loop = ControlLoop(controller(), hz=10, get_obs=lambda: state["obs"], send_action=send,
                       clock=clock, sleep=clock.sleep)
    assert loop.run(np.array([0.3, 0.3], np.float32), max_steps=8).overruns == 1
    held = np.diff(sent_at)
    assert held.min() >= 0.1 - 1e-9, held          # the late one was held too, not replaced at once
    with pytest.raises(ValueError, match="hz must be > 0"):
        ControlLoop(controller(), PointEnv(), hz=float("nan"))


def test_control_loop_robot_mode_sends_nothing_after_the_goal_is_reached():
    goal = np.array([0.3, -0.3], np.float32)
    reached = lambda obs, info: bool(np.linalg.norm(obs - goal) < 0.05)  # noqa: E731
    env = PointEnv()
    obs, _ = env.reset()
    state, sent = {"obs": obs}, []

    def send(a):
        assert not reached(state["obs"], {})       # never a command once the goal holds
        sent.append(a)
        state["obs"], *_ = env.step(a)

    rep = ControlLoop(controller(), hz=None, get_obs=lambda: state["obs"], send_action=send).run(
        goal, max_steps=60, stop_when=reached, record=True)
    assert rep.terminated and rep.steps == len(sent) < 60 and reached(rep.frames[-1], {})
    assert len(rep.frames) == rep.steps + 1
    env_rep = ControlLoop(controller(), PointEnv(), hz=None).run(goal, max_steps=60, stop_when=reached)
    assert env_rep.steps == rep.steps                # both modes stop after the same command


def test_control_loop_env_mode_stops_on_success():
    goal = np.array([0.3, -0.3], np.float32)
    loop = ControlLoop(controller(), PointEnv(), hz=None)
    rep = loop.run(goal, max_steps=60,
                   stop_when=lambda obs, info: bool(np.linalg.norm(obs - goal) < 0.05))
    assert rep.terminated and rep.steps < 60 and len(rep.infos) == rep.steps
    with pytest.raises(ValueError, match="get_obs"):
        ControlLoop(controller())


def test_control_loop_sets_torch_threads_while_it_runs_and_restores_them():
    """torch_threads=1 (a small model between sleeps): set for run(), restored after, even on error."""
    goal = np.array([0.3, -0.3], np.float32)
    before, seen = torch.get_num_threads(), []
    ctrl = controller()
    act = ctrl.act
    ctrl.act = lambda obs: seen.append(torch.get_num_threads()) or act(obs)
    ControlLoop(ctrl, PointEnv(), hz=None, torch_threads=1).run(goal, max_steps=3)
    assert seen == [1, 1, 1] and torch.get_num_threads() == before
    ctrl.act = lambda obs: 1 / 0
    with pytest.raises(ZeroDivisionError):
        ControlLoop(ctrl, PointEnv(), hz=None, torch_threads=1).run(goal, max_steps=3)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="torch_threads"):
        ControlLoop(ctrl, PointEnv(), torch_threads=0)


@pytest.mark.parametrize("mode", ["env", "robot"])
def test_control_loop_records_frames_and_actions_for_a_dataset(mode):
    """record=True: steps + 1 observations and steps actions, each action between its two frames."""
    env = PointEnv()
    if mode == "env":
        loop = ControlLoop(controller(), env, hz=None)
    else:
        obs, _ = env.reset()
        last = {"obs": obs}
        loop = ControlLoop(controller(), hz=None, get_obs=lambda: last["obs"],
                           send_action=lambda a: last.update(obs=env.step(a)[0]))
    rep = loop.run(np.array([0.3, -0.3], np.float32), max_steps=7, record=True)
    frames, actions = np.stack(rep.frames), np.stack(rep.actions)
    assert frames.shape == (8, 2) and actions.shape == (7, 2)
    np.testing.assert_allclose(frames[1:], frames[:-1] + DT * actions, rtol=0, atol=1e-6)
    assert loop.run(np.zeros(2, np.float32), max_steps=2).frames == []      # off by default


def test_controller_with_real_goal_energy_on_images():
    """The protocol as worldmodel.model.energy.GoalEnergy implements it: uint8 images, history, chunks."""
    wm = pytest.importorskip("worldmodel.model.world_model")
    from worldmodel.model.energy import GoalEnergy

    torch.manual_seed(0)
    cfg = wm.ModelConfig(image_size=16, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2,
                         enc_mlp=64, latent_dim=16, proj_hidden=32, pred_depth=1, pred_heads=2,
                         pred_head_dim=8, pred_mlp=32, action_hidden=32, action_dim=2,
                         frameskip=2, history=3)
    energy = GoalEnergy(wm.WorldModel(cfg).eval())
    plan = make_planner("cem", samples=32, iterations=3, elites=4)
    ctrl = MPCController(plan, energy, (LOW, HIGH), horizon=3, receding_horizon=1,
                         frameskip=2, history=3, time_budget_s=5.0)
    rng = np.random.default_rng(0)
    ctrl.reset(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    ctrl.warmup(1)
    for _ in range(7):
        a = ctrl.act(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        assert a.shape == (2,) and (a >= LOW).all() and (a <= HIGH).all()
    assert ctrl.stats()["plans"] == 4                 # one chunk (2 env steps) per plan
    grad = MPCController(make_planner("gradient", samples=4, iterations=3), energy, (LOW, HIGH),
                         horizon=2, receding_horizon=1, frameskip=2, history=3)
    grad.reset(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    assert grad.act(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).shape == (2,)
    with pytest.raises(ValueError, match="use history=3"):           # the model attends over 3 frames
        MPCController(plan, energy, (LOW, HIGH), frameskip=2, history=4)
    with pytest.raises(ValueError, match="model's history"):
        energy.set_observation(rng.integers(0, 256, (1, 4, 16, 16, 3), dtype=np.uint8),
                               np.zeros((1, 3, 4), np.float32))


def _image_model(history: int = 3):
    wm = pytest.importorskip("worldmodel.model.world_model")
    torch.manual_seed(0)
    cfg = wm.ModelConfig(image_size=16, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2,
                         enc_mlp=64, latent_dim=16, proj_hidden=32, pred_depth=1, pred_heads=2,
                         pred_head_dim=8, pred_mlp=32, action_hidden=32, action_dim=2,
                         frameskip=2, history=history)
    return wm.WorldModel(cfg).eval()


def test_cuda_graph_mode_is_refused_without_cuda_or_a_static_energy():
    from worldmodel.planners.graph import GraphedPlanner
    from worldmodel.planners import Bounds
    from worldmodel.model.energy import GoalEnergy

    model = _image_model()
    with pytest.raises(ValueError, match="needs device='cuda'"):
        MPCController(make_planner("cem"), GoalEnergy(model, static=True), (LOW, HIGH), cuda_graph=True)
    with pytest.raises(TypeError, match="static=True"):
        MPCController(make_planner("cem"), GoalEnergy(model), (LOW, HIGH), cuda_graph=True, device="cuda")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        GraphedPlanner(make_planner("cem")).solve(lambda a: a.sum((-1, -2)), Bounds.make(LOW, HIGH), 3)
    ctrl = MPCController(make_planner("cem"), GoalEnergy(model), (LOW, HIGH))
    with pytest.raises(ValueError, match="float frames are read as"):   # 0-255 floats: a wrong goal
        ctrl.reset(np.full((16, 16, 3), 200.0, np.float32))
    for budget in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="time_budget_s must be > 0"):
            MPCController(make_planner("cem"), GoalEnergy(model), (LOW, HIGH), time_budget_s=budget)
    if not torch.cuda.is_available():                 # a clear error, not torch's "not compiled with CUDA"
        with pytest.raises(ValueError, match="CUDA is not available here"):
            MPCController(make_planner("cem"), GoalEnergy(model), (LOW, HIGH), device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_controller_replays_one_graph_per_history_length():
    """cuda_graph=True: warmup captures cold and warm graphs for each history length; an episode
    then only replays them, with fresh samples each plan, and its actions stay in bounds; a new
    goal and history reach the graph (its plan's cost is what an eager energy gives its actions)."""
    from worldmodel.model.energy import GoalEnergy

    model = _image_model()
    torch.nn.init.normal_(model.predictor.adaln.weight, std=0.2)   # AdaLN-zero ignores the actions:
    model = model.cuda()                                           # every sample would cost the same
    energy = GoalEnergy(model, static=True)
    plan = make_planner("cem", samples=64, iterations=4, elites=8)
    ctrl = MPCController(plan, energy, (LOW, HIGH), horizon=3, receding_horizon=1, frameskip=2,
                         history=3, device="cuda", cuda_graph=True, time_budget_s=5.0)
    rng = np.random.default_rng(0)
    ctrl.reset(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    ctrl.warmup(2)
    captured = len(ctrl._graphed._graphs)
    assert captured == 6                                  # history lengths 1, 2, 3 x cold / warm
    for _ in range(9):
        a = ctrl.act(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        assert a.shape == (2,) and (a >= LOW).all() and (a <= HIGH).all()
    assert len(ctrl._graphed._graphs) == captured         # no capture inside the episode
    assert ctrl.stats()["plans"] == 5 and ctrl.stats()["deadline_misses"] == 0
    obs = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    costs = [float(ctrl.plan(obs).cost) for _ in range(3)]
    assert len(set(costs)) > 1                            # fresh samples at every replay
    # a new goal and a one-frame history reach the captured graph: its cost is the eager energy's
    goal = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ctrl.reset(goal)
    res = ctrl.plan(obs)
    check = GoalEnergy(model)
    check.set_goal(goal[None])
    check.set_observation(obs[None, None], np.zeros((1, 0, 4), np.float32))
    torch.testing.assert_close(check(res.actions[:, None]), res.cost[:, None], rtol=1e-4, atol=1e-5)
    assert len(ctrl._graphed._graphs) == captured


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_graph_controller_plans_with_a_bfloat16_predictor(compile):
    """GoalEnergy(dtype=torch.bfloat16) under a captured graph, also compiled (`wm eval cuda_graph=true
    precision=bf16 compile=true`): bf16 buffers in place, float32 costs, and the graph's plan costs
    what an eager bf16 energy gives its actions."""
    from worldmodel.model.energy import GoalEnergy

    model = _image_model().cuda()
    energy = GoalEnergy(model, static=True, dtype=torch.bfloat16, compile=compile)
    ctrl = MPCController(make_planner("cem", samples=64, iterations=4, elites=8), energy, (LOW, HIGH),
                         horizon=3, receding_horizon=1, frameskip=2, history=3, device="cuda",
                         cuda_graph=True)
    rng = np.random.default_rng(1)
    goal, obs = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    ctrl.reset(goal)
    ctrl.warmup(2)
    res = ctrl.plan(obs)
    assert res.cost.dtype == torch.float32 and energy.z_last.dtype == torch.bfloat16
    check = GoalEnergy(model, dtype=torch.bfloat16)
    check.set_goal(goal[None])
    check.set_observation(obs[None, None], np.zeros((1, 0, 4), np.float32))
    tol = 2e-2 if compile else 1e-3                       # Inductor fuses (and rounds) bf16 ops its own way
    torch.testing.assert_close(check(res.actions[:, None]), res.cost[:, None], rtol=tol, atol=tol / 10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_controller_in_async_mode_captures_nothing_inside_the_episode():
    from worldmodel.model.energy import GoalEnergy

    model = _image_model().cuda()
    plan = make_planner("cem", samples=64, iterations=4, elites=8)
    rng = np.random.default_rng(1)
    with MPCController(plan, GoalEnergy(model, static=True), (LOW, HIGH), horizon=3, receding_horizon=1,
                       frameskip=2, history=3, device="cuda", cuda_graph=True, async_lead=1) as ctrl:
        ctrl.reset(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        ctrl.warmup(2)
        captured = len(ctrl._graphed._graphs)             # per history length: cold, warm + committed
        for _ in range(12):
            a = ctrl.act(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
            assert a.shape == (2,) and (a >= LOW).all() and (a <= HIGH).all()
        assert len(ctrl._graphed._graphs) == captured == 6
        assert ctrl.stats()["plans"] >= 10
