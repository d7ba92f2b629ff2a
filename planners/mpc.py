"""Receding-horizon MPC controller: goal in, one environment action per call out.

`MPCController` plans action chunks with any optimiser from planners/ against a goal energy
(`GoalEnergyLike`, what worldmodel.model.energy.GoalEnergy offers), queues the first few as env
actions and replans when the queue runs dry, optionally in a background thread (async mode).
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
import numpy as np
import torch

from worldmodel.planners.base import Bounds, Planner, PlanResult, check_costs, float32_box
from worldmodel.planners.goal import CommittedPrefix, GoalEnergyLike
from worldmodel.planners.graph import GraphedPlanner


class MPCController:
    """`reset(goal)`, then `act(obs) -> action` at every control step.

    One plan step is an action chunk of width frameskip * A (the world model predicts one latent
    per chunk); the first `receding_horizon` chunks of a plan are split into env actions and queued
    (1 by default: a new plan after every chunk; LeWM runs its whole 5-chunk plan).
    The energy gets the last `history` observations spaced `frameskip` env steps apart (fewer at an
    episode's start) and the chunks executed between them.

    Time budget: `time_budget_s` bounds a whole plan, encoding included; the optimiser gets what
    is left as its anytime deadline. `stats()` counts `deadline_misses` (plans over budget) and
    `budget_cut_plans` (plans whose iterations the budget cut short).

    Warm start: the previous plan's mean (and elites) shifted by the env steps elapsed, padded
    with the box centre, passed as init_mean / init_elites.

    Async mode (`async_lead=k`, at most half of receding_horizon * frameskip): when k queued
    actions are left, the next plan starts in a worker thread from the latest observation; those k
    actions are committed (every candidate starts with them, CommittedPrefix) and dropped from the
    new plan when it is adopted. `act` waits for a plan not yet ready and counts a stall; a plan
    that failed raises from the `act` that would adopt it. k = 0 plans in the thread only when the
    queue is empty. Do not call `plan()` yourself while async planning is in flight.

    CUDA graph (`cuda_graph=True`): every solve is one captured graph replayed
    (planners.graph.GraphedPlanner), one per history length, captured at its first plan (call
    `warmup()` first); the energy must keep its inputs in place (GoalEnergy(model, static=True)).
    A time budget can then no longer stop iterations early.
    """

    def __init__(self, planner: Planner, energy_fn: GoalEnergyLike, bounds, horizon: int = 5,
                 receding_horizon: int = 1, action_dim: int | None = None, frameskip: int = 1,
                 history: int = 1, batch: int | None = None, time_budget_s: float | None = None,
                 async_lead: int | None = None, warm_start: bool = True,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 cuda_graph: bool = False) -> None:
        if not callable(getattr(planner, "solve", None)):
            raise TypeError("planner must offer solve(...); build one with planners.make_planner")
        for m in ("set_goal", "set_observation", "__call__"):
            if not callable(getattr(energy_fn, m, None)):
                raise TypeError(f"energy_fn lacks {m}(); it must follow worldmodel.planners.goal.GoalEnergyLike")
        if cuda_graph:
            if torch.device(device).type != "cuda":
                raise ValueError(f"cuda_graph=True needs device='cuda', got device={device!r}")
            if getattr(energy_fn, "static", False) is not True:
                raise TypeError("cuda_graph=True needs an energy that keeps its inputs in place: "
                                "GoalEnergy(model, static=True)")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"MPCController plans in torch.float32 or torch.float64 (got {dtype}); for a bf16 "
                            "predictor build the energy with GoalEnergy(model, dtype=torch.bfloat16)")
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} but CUDA is not available here (a CPU-only torch or no GPU); "
                             "plan with device='cpu' (and the model on the CPU)")
        low, high = (bounds.low, bounds.high) if isinstance(bounds, Bounds) else bounds
        self.env_bounds = Bounds.make(low, high, device=device, dtype=dtype)   # (A,)
        A = self.env_bounds.low.shape[0]
        if action_dim is not None and action_dim != A:
            raise ValueError(f"action_dim={action_dim} but the bounds have {A} entries")
        if not 1 <= receding_horizon <= horizon:
            raise ValueError(f"need 1 <= receding_horizon <= horizon, got {receding_horizon}, {horizon}")
        if frameskip < 1 or history < 1 or (batch is not None and batch < 1):
            raise ValueError("frameskip, history and batch must be >= 1")
        max_history = getattr(energy_fn, "max_history", None)
        if max_history is not None and history > max_history:
            raise ValueError(f"history={history} but the energy's model attends over at most {max_history} frames "
                             f"(its training history): use history={max_history}")
        if time_budget_s is not None and not time_budget_s > 0:        # NaN fails too
            raise ValueError(f"time_budget_s must be > 0 seconds (or None: no deadline), got {time_budget_s}")
        n_exec = receding_horizon * frameskip
        if async_lead is not None and not 0 <= async_lead <= n_exec // 2:
            raise ValueError(f"async_lead must be in [0, receding_horizon*frameskip/2 = {n_exec // 2}], got "
                             f"{async_lead}: each plan yields {n_exec} - async_lead new actions, and the next plan "
                             "must start async_lead actions before they run out; raise receding_horizon for more lead")
        self.planner, self.energy = planner, energy_fn
        self._graphed = GraphedPlanner(planner) if cuda_graph else None
        self._prefix = CommittedPrefix(energy_fn, frameskip, device, dtype)
        self.A, self.horizon, self.receding, self.frameskip = A, horizon, receding_horizon, frameskip
        self.history, self.batch, self.time_budget_s = history, batch, time_budget_s
        self.async_lead, self.warm_start = async_lead, warm_start
        # the planner's per-step box: one chunk = frameskip env actions side by side
        self.chunk_bounds = Bounds(self.env_bounds.low.repeat(frameskip),
                                   self.env_bounds.high.repeat(frameskip))  # (frameskip*A,)
        # float32 bounds rounded inward: an action clipped to them is inside the bounds as given
        self._low, self._high = float32_box(low, high)                 # refuses a box with no float32 inside
        self._pool: ThreadPoolExecutor | None = None
        self._goal_shape: tuple | None = None
        self._image = False                     # the goal is an image (B, H, W, 3): range-check frames
        self._clear()

    # ------------------------------------------------------------------ episode state
    def _clear(self) -> None:
        self._future: Future | None = None
        self._future_t0 = 0
        self._queue: deque[np.ndarray] = deque()                  # env actions (B, A)
        self._obs: deque[np.ndarray] = deque(maxlen=(self.history - 1) * self.frameskip + 1)
        self._acts: deque[np.ndarray] = deque(maxlen=max((self.history - 1) * self.frameskip, 1))
        self._t = 0                                                # env steps since reset
        self._mean: torch.Tensor | None = None                    # (B, H, fs*A) raw
        self._elites: torch.Tensor | None = None                  # (B, K, H, fs*A) raw
        self._mean_t = 0                                           # env step the mean starts at
        self._lat: list[float] = []
        self._iters: list[int] = []
        self._misses = self._cut = self._stalls = 0
        self._stall_s = 0.0

    def reset(self, goal_image: np.ndarray, seed: int | None = None) -> None:
        """Start an episode toward `goal_image` (obs layout; (batch, ...) when batch is set).
        Clears the queue, history, warm start and statistics; `seed` reseeds the planner."""
        self._drain()
        goal = self._as_array(goal_image, "reset(goal_image)")
        if self.batch is None:
            goal = goal[None]
        elif goal.ndim < 2 or goal.shape[0] != self.batch:
            raise ValueError(f"reset: batch={self.batch}, so the goal needs shape (batch, ...), "
                             f"got {goal.shape}")
        self._check_finite(goal, "reset(goal_image)")
        image = goal.ndim == 4 and goal.shape[-1] == 3                 # (B, H, W, 3); states pass as they are
        if image and goal.dtype.kind in "iub" and goal.dtype != np.uint8:
            raise TypeError(f"reset(goal_image): image frames are uint8 (0-255) or float in [0, 1], got "
                            f"{goal.dtype}; convert with frame.astype(np.uint8)")
        self._check_range(goal, image, "reset(goal_image)")
        self.energy.set_goal(goal)                  # first: a refused goal leaves the controller as it was
        self._goal, self._goal_shape, self._goal_dtype, self._image = goal, goal.shape[1:], goal.dtype, image
        self._clear()
        if seed is not None:
            (self._graphed or self.planner).reseed(seed)

    def close(self) -> None:
        """Stop the background planner thread (async mode)."""
        try:
            self._drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> "MPCController":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ input checks
    @staticmethod
    def _as_array(x, where: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{where}: expected a numpy array, got {type(x).__name__}")
        return x

    @staticmethod
    def _check_finite(x: np.ndarray, where: str) -> None:
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise ValueError(f"{where}: contains NaN or inf; check the sensor / simulator state")

    @staticmethod
    def _check_range(x: np.ndarray, image: bool, where: str) -> None:
        """Float frames are read as [0, 1]: 0-255 floats would plan toward nonsense latents."""
        if image and x.dtype.kind == "f" and x.size and x.max() > 1.0:
            raise ValueError(f"{where}: float frames are read as [0, 1], and this one reaches "
                             f"{float(x.max()):.3g}; pass uint8 frames (0-255) or divide by 255")

    def _validate(self, obs, where: str) -> np.ndarray:
        if self._goal_shape is None:
            raise RuntimeError(f"{where}: call reset(goal_image) first to set the goal")
        obs = self._as_array(obs, where)
        want = self._goal_shape if self.batch is None else (self.batch, *self._goal_shape)
        if obs.shape != want:
            raise ValueError(f"{where}: expected observation shape {want} (the goal's layout"
                             f"{', with the batch axis' if self.batch else ''}), got {obs.shape}; fit "
                             "camera frames with worldmodel.report.video.fit_frame(frame, image_size)")
        if obs.dtype != self._goal_dtype:
            raise TypeError(f"{where}: expected dtype {self._goal_dtype} like the goal, got "
                            f"{obs.dtype}; convert observations and goal the same way")
        self._check_finite(obs, where)
        self._check_range(obs, self._image, where)
        obs = obs.copy()        # the history keeps this frame: a caller reusing its buffer must not change it
        return obs if self.batch is not None else obs[None]        # (B, *obs_shape)

    # ------------------------------------------------------------------ planning
    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """(obs_history (B, T, ...), past_actions (B, T-1, fs*A)) from the recorded steps."""
        obs, acts, fs = list(self._obs), list(self._acts), self.frameskip
        n_acts = min(len(acts), self._t)
        T = min(self.history, (len(obs) - 1) // fs + 1, n_acts // fs + 1)
        frames = [obs[len(obs) - 1 - fs * j] for j in range(T)][::-1]
        chunks = [np.concatenate(acts[len(acts) - fs * (j + 1): len(acts) - fs * j], axis=-1)
                  for j in range(T - 1)][::-1]
        B = frames[0].shape[0]
        past = (np.stack(chunks, 1) if chunks else np.zeros((B, 0, fs * self.A))).astype(np.float32)
        return np.stack(frames, 1), past

    def _shift(self, x: torch.Tensor | None, steps: int) -> torch.Tensor | None:
        """Shift a plan (B, [K,] H, fs*A) forward by `steps` env steps, pad with the box centre."""
        if x is None or not self.warm_start or steps >= self.horizon * self.frameskip:
            return None
        lead = x.shape[:-2]
        flat = x.reshape(*lead, self.horizon * self.frameskip, self.A)   # (..., H*fs, A)
        pad = self.env_bounds.center.expand(*lead, steps, self.A)
        flat = torch.cat([flat[..., steps:, :], pad], dim=-2)
        return flat.reshape(x.shape)

    def _solve(self, obs_hist: np.ndarray, past: np.ndarray, t0: int,
               committed: np.ndarray | None = None) -> PlanResult:
        """Plan from a history snapshot taken at env step t0 (runs in the worker in async mode);
        committed (B, k, A): env actions already queued for steps t0 .. t0+k-1."""
        t = time.perf_counter()               # latency = encoding the history + the solve
        self.energy.set_observation(obs_hist, past)
        budget = self.time_budget_s
        if budget is not None:                # the solver gets what encoding left of the budget
            budget = max(budget - (time.perf_counter() - t), 1e-6)
        energy, k = self.energy, 0 if committed is None else committed.shape[1]
        if k:
            self._prefix.set(committed)
            energy = self._prefix
        kw = dict(batch=obs_hist.shape[0], init_mean=self._shift(self._mean, t0 - self._mean_t),
                  init_elites=self._shift(self._elites, t0 - self._mean_t), deadline_s=budget)
        if self._graphed is not None:     # one graph per history length T and committed length k
            res = self._graphed.solve(energy, self.chunk_bounds, self.horizon, key=(obs_hist.shape[1], k), **kw)
        else:
            res = self.planner.solve(energy, self.chunk_bounds, self.horizon, **kw)
        res.latency_s = time.perf_counter() - t
        return res

    def _adopt(self, res: PlanResult, t0: int, drop: int, enqueue: bool = True) -> None:
        """Record a finished plan: warm-start state, statistics, and (enqueue) its env actions.
        Refuses a plan with NaN/Inf actions (a planner bug must not reach the robot); a non-finite
        warm start is dropped (e.g. MPPI's mean after a plan where every cost was NaN)."""
        chunks = res.actions[:, :self.receding]                       # (B, r, fs*A)
        steps = chunks.reshape(chunks.shape[0], -1, self.A)            # (B, r*fs, A)
        # host sync, once per plan: the actions leave the device for the robot
        steps = steps.detach().to(torch.float64).cpu().numpy()
        check_costs(res.cost, f"MPCController ({getattr(self.planner, 'name', type(self.planner).__name__)})")
        if not np.isfinite(steps).all():
            raise RuntimeError(f"the planner ({getattr(self.planner, 'name', type(self.planner).__name__)}) returned "
                               "NaN/Inf actions; nothing was sent. Check its settings and the energy's costs")
        warm = res.mean is None or bool(torch.isfinite(res.mean).all())  # host sync, once per plan
        self._mean, self._elites, self._mean_t = (res.mean, res.elites, t0) if warm else (None, None, t0)
        self._lat.append(res.latency_s)
        self._iters.append(res.iterations)
        self._misses += int(self.time_budget_s is not None and res.latency_s > self.time_budget_s)
        self._cut += int(res.deadline_missed and self._graphed is None)   # a graph runs every iteration
        if not enqueue:
            return
        steps = np.clip(steps.astype(np.float32), self._low, self._high)
        self._queue.clear()
        self._queue.extend(steps[:, i] for i in range(drop, steps.shape[1]))

    def plan(self, obs) -> PlanResult:
        """Plan from `obs` (as the current frame, after the recorded history) without acting.
        Updates the warm start and statistics, leaves the action queue alone; the result's
        actions are (B, H, fs*A) raw chunks."""
        obs = self._validate(obs, "plan(obs)")
        self._drain()
        saved = (self._obs.copy(), self._acts.copy())
        self._obs.append(obs)
        try:
            res = self._solve(*self._snapshot(), self._t)
        finally:
            self._obs, self._acts = saved
        self._adopt(res, self._t, 0, enqueue=False)
        return res

    def act(self, obs) -> np.ndarray:
        """One env action (A,) (or (batch, A)), float32, inside the bounds."""
        obs = self._validate(obs, "act(obs)")
        saved = self._obs.copy()
        self._obs.append(obs)
        try:
            if self.async_lead is None:
                if not self._queue:
                    self._adopt(self._solve(*self._snapshot(), self._t), self._t, 0)
            else:
                self._step_async()
        except BaseException:
            self._obs = saved                  # a failed step leaves the history as it was: retry-safe
            raise
        a = self._queue.popleft()                                      # (B, A)
        self._acts.append(a)
        self._t += 1
        return a.copy() if self.batch is not None else a[0].copy()    # the caller's to keep or change

    def _submit_if_due(self) -> None:
        """Start the next plan in the worker when only async_lead queued actions are left."""
        if self._future is None and len(self._queue) <= self.async_lead:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mpc-plan")
            self._future_t0 = self._t
            committed = np.stack(self._queue, axis=1) if self._queue else None   # (B, k, A)
            self._future = self._pool.submit(self._solve, *self._snapshot(), self._t, committed)

    def _step_async(self) -> None:
        self._submit_if_due()
        if not self._queue:
            fut, t0 = self._future, self._future_t0
            self._future = None                 # taken now: a plan that failed is not waited for again
            stalled = not fut.done() and bool(self._lat)  # waiting for the first plan is no stall
            t = time.perf_counter()
            res = fut.result()                  # re-raises the worker's exception here, once
            if stalled:
                self._stalls += 1
                self._stall_s += time.perf_counter() - t
            self._adopt(res, t0, self._t - t0)
            self._submit_if_due()               # this tick: the next plan starts with all k committed

    def _drain(self) -> None:
        """Wait for and discard an in-flight async plan (and any error it ended with: it is dropped)."""
        fut, self._future = self._future, None
        if fut is not None:
            try:
                fut.result()
            except Exception:                   # the plan is discarded, so is its failure
                pass

    # ------------------------------------------------------------------ tooling
    def warmup(self, n: int = 2) -> None:
        """Run `n` throw-away plans on a full-length fake history made of the goal (compiles
        kernels, fills allocator caches); keeps statistics, warm start and the planner's random
        streams as they were (outside cuda_graph mode). With cuda_graph, or
        an energy that says it is compiled (`energy.compiled`, GoalEnergy(compile=True)), `n` plans
        per history length 1..history instead, the first cold and the others warm-started (and, in
        async mode, after `async_lead` committed actions), which captures every graph and compiles
        every shape an episode needs."""
        if self._goal_shape is None:
            raise RuntimeError("warmup(): call reset(goal_image) first")
        self._drain()
        B = self.batch or 1
        hist = np.repeat(self._goal[:, None], self.history, axis=1)  # (B, history, *obs_shape)
        past = np.broadcast_to(self.chunk_bounds.center.cpu().numpy().astype(np.float32),
                               (B, self.history - 1, self.frameskip * self.A)).copy()
        saved = self._mean, self._elites, self._mean_t
        # the planner's random streams too, so a seeded episode plans the same with or without warmup
        # (a captured CUDA graph holds its generator: graph mode keeps the streams where capture left them)
        rng = (self.planner.rng_state() if self._graphed is None and hasattr(self.planner, "rng_state")
               else None)
        try:
            if self._graphed is None and not getattr(self.energy, "compiled", False):
                for _ in range(n):
                    self._solve(hist, past, self._mean_t)
            else:   # the graphs an episode replays: cold at its start, then warm (and committed, async)
                k = self.async_lead or 0
                committed = np.broadcast_to(self.env_bounds.center.cpu().numpy(), (B, k, self.A)).copy()
                for T in range(1, self.history + 1):
                    self._mean = self._elites = None
                    for i in range(n):
                        res = self._solve(hist[:, self.history - T:], past[:, self.history - T:], 0,
                                          committed if i and k else None)
                        self._mean, self._elites, self._mean_t = res.mean, res.elites, 0
        finally:
            self._mean, self._elites, self._mean_t = saved
            if rng is not None:
                self.planner.set_rng_state(rng)

    @property
    def latencies_s(self) -> list[float]:
        """Wall time of every plan since `reset` (seconds), for aggregating across episodes."""
        return list(self._lat)

    def stats(self) -> dict:
        """Planning latency p50/p95/max (ms), plans, mean iterations, deadline misses (plans longer
        than time_budget_s), plans the budget cut short, async stalls; a SurpriseMonitor energy's too."""
        lat = np.asarray(self._lat) * 1e3
        pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: float("nan"))
        return {"plans": len(self._lat), "latency_ms_p50": pct(50), "latency_ms_p95": pct(95),
                "latency_ms_max": float(lat.max()) if lat.size else float("nan"),
                "mean_iterations": float(np.mean(self._iters)) if self._iters else float("nan"),
                "deadline_misses": self._misses, "budget_cut_plans": self._cut, "async_stalls": self._stalls,
                "async_stall_s": self._stall_s, "steps": self._t,
                **(self.energy.surprise_stats() if hasattr(self.energy, "surprise_stats") else {})}
