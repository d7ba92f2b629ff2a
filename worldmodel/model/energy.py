"""The goal energy planners minimise: squared L2 between a predicted latent and the goal's latent.

GoalEnergy encodes the goal image once per goal (`set_goal`) and the observation history once per
plan (`set_observation`: encoder + the predictor's KV cache of the past tokens, batch B, shared by
every candidate). Each call then rolls the candidates forward one token per step. It satisfies
planners.base.Energy: actions (B, S, Hz, chunk) in raw env units -> costs (B, S).

dtype=torch.bfloat16 plans with a bfloat16 copy of the predictor and action encoder
(WorldModel.planning_copy): the goal and history are still encoded in float32, the costs come back
in float32. On CUDA that halves the predictor's weight traffic and avoids weight casts per call.
On a CPU whether bf16 pays depends on the CPU's bf16 support (worldmodel.machine.bf16_matmul_speedup
measures it on the machine at hand).

terms=[...] (worldmodel/model/energy_terms.py) adds weighted costs of the candidate actions and of the
latents predicted for them (action magnitude and rate, keeping away from forbidden images, any
callable): still one energy, for any planner. policy= (a distilled GoalPolicy) lets the energy
propose a plan (`propose`, planners.policy.Proposing) from the latents it already holds.
`prediction_error()` is the model's one-step error on the newest observed frame (the surprise
monitor reads it).
"""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from worldmodel.planners.graph import StaticBuffers
from worldmodel.model.world_model import WorldModel


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}   # precision= names -> the planning dtype


def _tensor(x, device, dtype=None) -> Tensor:
    """numpy (any strides) or tensor -> tensor on `device`."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)
    return torch.as_tensor(x, dtype=dtype, device=device)


def _frozen(compiled):
    """`compiled` run with Inductor's freezing on: read whenever a new shape is traced and compiled."""
    from torch._inductor import config as inductor_config

    def call(actions: Tensor) -> Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(actions)
    return call


def compile_refusal(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why GoalEnergy(compile=True) plans with eager code on this machine, or None. Inductor's bf16
    CPU code (torch 2.13) returned wrong costs on a CPU whose oneDNN has no native bf16 (an AMD EPYC
    without AVX-512) and NaN gradients when made to emit AVX2 code: compiled bf16 is used on a CPU
    only where oneDNN reports bf16 support (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX; it pays only
    with AVX512-BF16 or AMX, which `wm eval` measures and says)."""
    if device.type != "cpu" or dtype != torch.bfloat16:
        return None
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):         # a build without oneDNN (e.g. some ARM wheels)
        native = False
    if not native:
        return ("compiled bf16 planning needs a CPU with native bf16 in oneDNN (AVX-512 or AMX); this one "
                "has none, where Inductor's bf16 code gave wrong costs: planning with eager bf16 "
                "(precision=fp32 compile=true compiles float32)")
    return None


GOAL_AT = ("every_chunk", "last_chunk")   # GoalEnergy(goal_at=): where the goal distance is counted


class GoalEnergy:
    """cost = sum_k ||z_hat_k - z_goal||^2 over every predicted chunk k by default (goal_at="every_chunk");
    goal_at="last_chunk": ||z_hat_Hz - z_goal||^2, the last chunk's only (LeWM's); `step_weights` (Hz,):
    the weighted sum sum_k w_k ||z_hat_k - z_goal||^2 instead.

    No host syncs in __call__. Gradients flow to the actions when they require grad (for gradient
    planners); otherwise the call runs without autograd.

    dtype: the predictor's dtype while planning (None: the model's own, float32); another dtype
    copies the predictor once, here: build a new energy after changing the model's weights.

    compile=True runs each call through torch.compile (Inductor): one compilation per history
    length, plus one with a dynamic sample count where it changes between calls (iCEM), all done
    by MPCController.warmup(); then fused kernels (benchmarks/plan_latency.py --compile times both).
    With dtype=torch.bfloat16 on a CPU the copy's weights are also frozen into the compiled code as
    constants, packed once rather than at every call. Compiled code is trusted only once checked:
    each graph's first two calls are also run eagerly, and costs that disagree switch the energy to
    eager code with a warning (`compile_note` says why; so does `compile_refusal` where it is known
    to be wrong before any call). Gradients (gradient planners) take eager code on a CPU.

    static=True keeps the goal latent and the history's latent + KV cache at fixed addresses, one
    set of buffers per shape, and copies new values into them: a CUDA graph captured over __call__
    (planners.graph.GraphedPlanner) then sees every new goal and observation.
    """

    def __init__(self, model: WorldModel, obs_pixels: Tensor | None = None,
                 past_actions: Tensor | None = None, goal_pixels: Tensor | None = None,
                 step_weights: Tensor | None = None, goal_at: str = "every_chunk", static: bool = False,
                 dtype: torch.dtype | None = None, compile: bool = False, terms: Sequence[Any] = (),
                 policy: Any = None):
        if model.training:
            raise ValueError("GoalEnergy needs the model in eval mode (BatchNorm and dropout would make "
                             "costs depend on the batch): call model.eval() first")
        own = next(model.predictor.parameters()).dtype
        if dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"GoalEnergy dtype must be torch.float32 or torch.bfloat16, got {dtype}")
        self.model = model
        self.max_history = model.cfg.history       # frames the predictor was trained to attend over
        self.dtype = own if dtype is None else dtype
        # the model that rolls candidates forward: this one, or a copy with the predictor in `dtype`
        self.planner_model = model if self.dtype == own else model.planning_copy(self.dtype)
        self.device = next(model.parameters()).device
        if goal_at not in GOAL_AT:
            raise ValueError(f"goal_at must be one of {', '.join(GOAL_AT)}, got {goal_at!r}")
        self.goal_at = goal_at
        self.step_weights = None if step_weights is None else torch.as_tensor(
            step_weights, dtype=torch.float32, device=self.device)
        self.terms = [t.bind(model) for t in terms]       # energy_terms.EnergyTerm, bound to this model
        self.policy = policy                                # a GoalPolicy distilled from this model, or None
        self.z_goal: Tensor | None = None
        self.z_last: Tensor | None = None
        self.z_hist: Tensor | None = None                  # (B, h, D) float32: the observed latents
        self.past: Tensor | None = None                    # (B, h-1, chunk) the chunks between them
        self.cache: list = []
        # compile_note: why compile=True was not honoured (compile_refusal, or compiled costs that
        # disagreed with eager ones at their first call), else None
        self.compile_note = compile_refusal(self.dtype, self.device) if compile else None
        if self.compile_note:
            warnings.warn(self.compile_note, RuntimeWarning, stacklevel=2)
            compile = False
        self.static, self.compiled = static, compile
        self._checked: dict[int, int] = {}                # history length -> compiled graphs cross-checked
        self._buffers = StaticBuffers()
        # A private copy (dtype=bf16) on the CPU compiles with its weights as constants (Inductor's
        # freezing): packed for oneDNN once, not at every call. Never the model's own weights: they
        # may still change.
        self._freeze = compile and self.planner_model is not model and self.device.type == "cpu"
        # one graph per history length (the cache's length); a sample count that changes between calls
        # (iCEM's decaying population) gets one dynamic-shape graph at its second size, not one per size
        self._cost = torch.compile(self._costs) if compile else None   # used only while self.compiled
        if self._freeze:
            self._cost = _frozen(self._cost)
        if goal_pixels is not None:
            self.set_goal(goal_pixels)
        if obs_pixels is not None:
            self.set_observation(obs_pixels, past_actions)

    @torch.no_grad()
    def set_goal(self, goal_pixels: Tensor) -> None:
        """Goal image(s) (B, H, W, 3) -> z_goal (B, D). Once per goal."""
        goal = _tensor(goal_pixels, self.device)
        if goal.dim() != 4:
            raise ValueError(f"goal pixels must be (B, H, W, 3), got {tuple(goal.shape)}")
        self.set_goal_latent(self.model.encode(goal))     # (B, D)

    @torch.no_grad()
    def set_goal_latent(self, z_goal: Tensor) -> None:
        """Like set_goal but from already-encoded goal latents z_goal (B, D)."""
        self.z_goal = self._keep(("goal",), z_goal.float())

    def _keep(self, name: tuple, x: Tensor) -> Tensor:
        """x itself, or with static=True its values copied into this name's and shape's buffer."""
        return self._buffers.keep(name, x) if self.static else x

    @torch.no_grad()
    def set_observation(self, obs_pixels: Tensor, past_actions: Tensor | None = None) -> None:
        """Observation history (B, h, H, W, 3) and the h-1 action chunks between those frames
        (B, h-1, chunk) (None or empty when h == 1). Tensors or numpy arrays. Once per plan."""
        obs = _tensor(obs_pixels, self.device)
        if obs.dim() != 5:
            raise ValueError(f"observation pixels must be (B, h, H, W, 3), got {tuple(obs.shape)}")
        if past_actions is not None:
            past_actions = _tensor(past_actions, self.device, torch.float32)
        z_hist = self.model.encode(obs)                    # (B, h, D)
        self.set_latent_history(z_hist, past_actions)

    @torch.no_grad()
    def set_latent_history(self, z_hist: Tensor, past_actions: Tensor | None = None) -> None:
        """Like set_observation but from already-encoded latents z_hist (B, h, D)."""
        if z_hist.dim() != 3 or not 1 <= z_hist.shape[1] <= self.max_history:
            raise ValueError(f"history must be (B, h, D) with 1 <= h <= {self.max_history} (the model's history), "
                             f"got {tuple(z_hist.shape)}: pass at most the last {self.max_history} frames "
                             f"(MPCController(history={self.max_history}))")
        self.z_hist, self.past = z_hist.float(), past_actions
        z_hist = z_hist.to(self.dtype)
        cache = self.planner_model.prefill(z_hist, past_actions)  # per layer: (B, 1, H, hd) pairs
        n = len(cache[0]) if cache else 0
        self.cache = [[tuple(self._keep(("kv", i, j, n, m), t) for m, t in enumerate(kv))
                       for j, kv in enumerate(layer)] for i, layer in enumerate(cache)]
        self.z_last = self._keep(("last",), z_hist[:, -1:])  # (B, 1, D)

    def latents(self, actions: Tensor) -> Tensor:
        """Candidate chunks (B, S, Hz, chunk) -> predicted latents (B, S, Hz, D)."""
        if self.z_last is None:
            raise RuntimeError("call set_observation(obs_pixels, past_actions) before evaluating")
        if actions.dim() != 4 or actions.shape[0] != self.z_last.shape[0]:
            raise ValueError(f"actions must be (B={self.z_last.shape[0]}, S, Hz, chunk), "
                             f"got {tuple(actions.shape)}")
        with torch.set_grad_enabled(actions.requires_grad and torch.is_grad_enabled()):
            return self.planner_model.rollout_cached(self.z_last, self.cache, actions)

    @torch.no_grad()
    def propose(self, horizon: int) -> Tensor:
        """The distilled policy's plan (B, horizon, chunk) raw, from the observed latents toward the
        goal: one forward pass (planner=policy, and the proposal that seeds cem / icem)."""
        if self.policy is None:
            raise RuntimeError("this energy has no policy to propose with: GoalEnergy(model, policy=load_policy(...)) "
                               "(wm eval distilled=runs/distill/<name>/policy.pt)")
        if self.z_hist is None or self.z_goal is None:
            raise RuntimeError("call set_goal and set_observation before propose()")
        return self.policy(self.z_hist, self.z_goal, horizon)

    @torch.no_grad()
    def prediction_error(self) -> Tensor | None:
        """(B,) the one-step prediction error (mean squared, per latent dimension) of the newest
        observed frame given the frames and chunks before it; None with a single observed frame."""
        if self.z_hist is None or self.z_hist.shape[1] < 2:
            return None
        z, past = self.z_hist, self.past.to(self.z_hist.device)
        z_hat = self.model.predict(z[:, :-1], past)[:, -1].float()            # (B, D)
        return (z_hat - z[:, -1]).square().mean(-1)                          # (B,)

    def __call__(self, actions: Tensor) -> Tensor:
        """actions (B, S, Hz, chunk) raw env units -> costs (B, S)."""
        if self.z_goal is None:
            raise RuntimeError("call set_goal(goal_pixels) before evaluating")
        if not self.compiled:
            return self._costs(actions)
        if actions.requires_grad and torch.is_grad_enabled() and self.device.type == "cpu":
            # gradient planners: eager on the CPU, where Inductor's backward of this rollout
            # corrupted the heap (torch 2.13, AVX-512 and AVX2 code alike)
            return self._costs(actions)
        cost = self._cost(actions)
        n = len(self.cache[0]) if self.cache else 0
        if self._checked.get(n, 0) < 2 and not (      # a graph's first calls: static and dynamic shape
                self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            self._checked[n] = self._checked.get(n, 0) + 1
            cost = self._cross_check(actions, cost)
        return cost

    @torch.no_grad()
    def _cross_check(self, actions: Tensor, cost: Tensor) -> Tensor:
        """A compiled graph's first costs against eager ones (warm-up time, host sync): wrong ones
        (a miscompiled kernel) switch this energy to eager code for good, with a warning."""
        eager = self._costs(actions)                                           # (B, S)
        rtol = 0.05 if self.dtype == torch.bfloat16 else 1e-3
        atol = 1e-4 * float(eager.abs().nan_to_num().max()) + 1e-12           # host sync
        if torch.allclose(cost.float(), eager, rtol=rtol, atol=atol, equal_nan=True):  # host sync
            return cost
        worst = float((cost.float() - eager).abs().nan_to_num(float("inf")).max())  # host sync
        self.compile_note = (f"compiled costs differ from eager ones by up to {worst:.3g} "
                             f"(rtol {rtol}) on this machine: planning with eager code")
        warnings.warn(self.compile_note, RuntimeWarning, stacklevel=3)
        self.compiled = False
        return eager

    def _costs(self, actions: Tensor) -> Tensor:
        z_hat = self.latents(actions).float()              # (B, S, Hz, D), costs in float32
        with torch.set_grad_enabled(actions.requires_grad and torch.is_grad_enabled()):
            goal = self.z_goal[:, None, None]              # (B, 1, 1, D)
            w = self.step_weights
            if w is None and self.goal_at == "every_chunk":
                w = torch.ones(z_hat.shape[2], device=z_hat.device)                # (Hz,)
            if w is None:
                cost = (z_hat[:, :, -1:] - goal).square().sum(-1)[..., 0]  # (B, S)
            elif w.shape != (z_hat.shape[2],):
                raise ValueError(f"step_weights has shape {tuple(w.shape)}, need ({z_hat.shape[2]},) = the horizon")
            else:
                cost = (z_hat - goal).square().sum(-1) @ w  # (B, S)
            for term in self.terms:
                cost = cost + term(actions, z_hat)         # (B, S)
            return cost
