"""Fixed-rate control loop: observe -> controller.act -> send, at `hz`, recording overruns.

Works with either a gymnasium-style object (`reset(seed=...) -> (obs, info)`,
`step(action) -> (obs, reward, terminated, truncated, info)`) or a robot given as two callbacks
`get_obs() -> obs` and `send_action(action)`. The loop sleeps until each tick; a step whose
work (observe + act + send) ends after its tick's deadline is an *overrun*: it is counted, and
the schedule restarts one period after the late command was sent, so that command too is held
for a period instead of being replaced at once (a robot must never receive a flurry of stale
commands). hz=None runs as fast as possible (simulation).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class LoopReport:
    steps: int
    overruns: int                       # steps whose work ended after their tick's deadline
    hz_target: float | None
    hz_achieved: float                  # steps / wall time
    step_ms_p50: float                  # observe + act + send time per step
    step_ms_p95: float
    step_ms_max: float
    terminated: bool = False            # the env ended the episode (or stop_when said so)
    truncated: bool = False
    infos: list[dict] = field(default_factory=list, repr=False)  # env info per step (env mode)
    # record=True: every observation (steps + 1, the one after the last action included) and every
    # action sent (steps), ready for worldmodel.data.recorder.DatasetWriter.add_episode(frames, actions)
    frames: list[np.ndarray] = field(default_factory=list, repr=False)
    actions: list[np.ndarray] = field(default_factory=list, repr=False)


class ControlLoop:
    """Run `controller.act` against an env or a robot at a fixed rate."""

    def __init__(self, controller: Any, env: Any = None, hz: float | None = 10.0,
                 get_obs: Callable[[], Any] | None = None,
                 send_action: Callable[[np.ndarray], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] = time.sleep, torch_threads: int | None = None) -> None:
        if env is None and (get_obs is None or send_action is None):
            raise ValueError("ControlLoop needs an env with reset/step, or both get_obs and "
                             "send_action callbacks")
        if env is not None and (get_obs is not None or send_action is not None):
            raise ValueError("give ControlLoop either env or get_obs/send_action, not both")
        if env is not None and not (callable(getattr(env, "reset", None))
                                    and callable(getattr(env, "step", None))):
            raise TypeError("env must offer reset() and step(action) (gymnasium API)")
        if hz is not None and not (hz > 0 and hz != float("inf")):   # NaN fails too
            raise ValueError(f"hz must be > 0 or None (as fast as possible), got {hz}")
        if torch_threads is not None and not (isinstance(torch_threads, int) and torch_threads >= 1):
            raise ValueError(f"torch_threads must be None (leave torch's setting) or an int >= 1, got {torch_threads!r}")
        self.controller, self.env, self.hz = controller, env, hz
        # torch's intra-op threads while run() runs (restored after): 1 suits a small model between
        # sleeps, whose pool threads fall asleep every tick and cost more to wake than they compute
        self.torch_threads = torch_threads
        self.get_obs, self.send_action = get_obs, send_action
        self.clock, self.sleep = clock, sleep

    def run(self, goal: Any, max_steps: int, seed: int | None = None, obs: Any = None,
            stop_when: Callable[[Any, dict], bool] | None = None, record: bool = False) -> LoopReport:
        """Reset the controller toward `goal` and run up to `max_steps` control steps.

        env mode: the env is reset with `seed` unless a first observation `obs` is given (for
        an env already placed at its start state). stop_when(obs, info) -> True ends the run
        early (e.g. the task's success test): in env mode on the observation a step returns, in
        robot mode on each fresh observation before acting on it (info is then {}), so no command
        follows the one that reached the goal. record=True keeps copies of the observations and
        actions in the report (robot mode reads one more observation after the last action),
        outside the timed work."""
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if self.torch_threads is None:
            return self._run(goal, max_steps, seed, obs, stop_when, record)
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        try:
            return self._run(goal, max_steps, seed, obs, stop_when, record)
        finally:
            torch.set_num_threads(saved)

    def _run(self, goal: Any, max_steps: int, seed: int | None, obs: Any,
             stop_when: Callable[[Any, dict], bool] | None, record: bool) -> LoopReport:
        self.controller.reset(goal)
        if self.env is not None and obs is None:
            obs, _ = self.env.reset(seed=seed)
        period = None if self.hz is None else 1.0 / self.hz
        work, infos, frames, actions = [], [], [], []
        overruns, terminated, truncated = 0, False, False
        start = self.clock()
        tick = start
        sent = 0                            # commands sent (= steps)
        for _ in range(max_steps):
            t0 = self.clock()
            if self.env is None:
                obs = self.get_obs()
                if stop_when is not None and stop_when(obs, {}):
                    terminated = True
                    break
            obs_seen = obs
            action = self.controller.act(obs)
            info: dict = {}
            if self.env is None:
                self.send_action(action)
            else:
                obs, _, terminated, truncated, info = self.env.step(action)
                infos.append(info)
            sent += 1
            now = self.clock()
            work.append(now - t0)
            if record:
                frames.append(np.array(obs_seen))
                actions.append(np.array(action))
            if self.env is not None and stop_when is not None and stop_when(obs, info):
                terminated = True
            if terminated or truncated:
                break
            if period is not None:
                tick += period
                if now > tick:              # overrun: count it; the late command is held a full period
                    overruns += 1
                    tick = now + period
                self.sleep(max(tick - self.clock(), 0.0))
        steps = sent
        wall = max(self.clock() - start, 1e-9)
        if record:
            frames.append(np.array(obs if self.env is not None or terminated else self.get_obs()))
        ms = np.asarray(work) * 1e3 if work else np.full(1, np.nan)   # nan: stopped before acting
        return LoopReport(steps=steps, overruns=overruns, hz_target=self.hz,
                          hz_achieved=steps / wall, step_ms_p50=float(np.percentile(ms, 50)),
                          step_ms_p95=float(np.percentile(ms, 95)), step_ms_max=float(ms.max()),
                          terminated=bool(terminated), truncated=bool(truncated), infos=infos,
                          frames=frames, actions=actions)
