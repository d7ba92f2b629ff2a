"""Typed configs of `wm eval`, `wm check` and `wm compare` (planner presets in configs/planner/). No torch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASK_DRAWS = ("heldout", "training")   # eval tasks=: where starts and goals come from
PRECISIONS = ("fp32", "bf16")    # eval precision=: the predictor's dtype while planning


def valid_step_weights(weights: list[float], horizon: int) -> bool:
    """GoalEnergy's step_weights: one finite weight >= 0 per planned chunk, not all 0."""
    return len(weights) == horizon and all(math.isfinite(x) and x >= 0 for x in weights) and sum(weights) > 0


@dataclass
class TermsConfig:
    """Energy terms added to the goal distance (worldmodel/model/energy_terms.py); 0 / null: off."""

    action: float = 0.0                # weight of the mean squared action (raw units): smaller commands
    rate: float = 0.0                  # weight of the mean squared change between consecutive actions
    avoid: list[str] | None = None     # images to keep the predicted path away from: .npy/.npz (N, H, W, 3)
                                       # uint8 or .png files, e.g. terms.avoid=[corner.npy]
    avoid_weight: float = 1.0          # weight of keeping away from them
    avoid_radius: float = 1.0          # how far "away" reaches, in latent units per dimension
    cost: str | None = None            # module:function, fn(latents (B,S,H,D), actions) -> (B,S), e.g. my_costs:fn
    cost_weight: float = 1.0

    def __post_init__(self) -> None:
        for k in ("action", "rate", "avoid_weight", "cost_weight"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"terms.{k} must be a finite weight >= 0, got {v}; e.g. terms.{k}=0.1 (0: off)")
        if not (math.isfinite(self.avoid_radius) and self.avoid_radius > 0):
            raise ValueError(f"terms.avoid_radius must be a finite number > 0, got {self.avoid_radius}; e.g. 1.0")
        if self.avoid is not None and not self.avoid:
            raise ValueError("terms.avoid=[] names no image; list files, e.g. terms.avoid=[corner.npy], or null")


@dataclass
class EvalConfig:
    checkpoint: str = ""               # a best.pt / last.pt written by `wm train`
    ensemble: list[str] = field(default_factory=list)   # more checkpoints (same data, other seed=): plans with the
                                       # mean energy of checkpoint and these, e.g. ensemble=[b/best.pt,c/best.pt]
    env: str | None = None             # null: the env of the checkpoint's training data
    planner: dict = field(default_factory=dict)   # the planner group (configs/planner/<name>.yaml)
    distilled: str | None = None       # a `wm distill` policy.pt of this checkpoint: planner=policy acts with
                                       # it; cem and icem start from its plan (proposal: null or true)
    terms: TermsConfig = field(default_factory=TermsConfig)   # energy terms beside the goal distance
    episodes: int = 50
    budget: int = 50                   # env steps per episode
    goal_offset: int = 25              # goal = state this many steps after the start
    horizon: int = 5                   # planned action chunks
    receding_horizon: int = 1          # chunks executed before replanning (1: after every chunk; LeWM: 5,
                                       # the whole plan)
    goal_at: str = "every_chunk"       # every_chunk: the energy sums the goal distance over every planned
                                       # chunk | last_chunk: the last chunk's only (LeWM's)
    history: int | None = None         # frames the planner conditions on (the newest and those before it,
                                       # a chunk apart); null: the model's training history (LeWM: 1)
    step_weights: list[float] | None = None   # null: goal_at's; one weight per chunk (horizon of them):
                                       # the weighted sum over all chunks, e.g. [1,1,1,1,1]
    tasks: str = "heldout"             # heldout: starts and goals from fresh episodes never trained on |
                                       # training: from the training data's own episodes (LeWM's draw)
    data: str | None = None            # tasks=training: the dataset (null: the one the checkpoint trained on)
    eval_seed: int = 1_000_003         # base seed of the held-out episodes (never a training seed)
    policy: str | None = None          # held-out episodes' policy; null: the training data's
    policy_kwargs: dict[str, Any] | None = None   # its kwargs; null: the training data's if policy= is
                                       # null, else the policy's defaults (+policy_kwargs.noise=0.6)
    episode_len: int | None = None     # held-out episodes' length; null: the training data's
    batch: int = 50                    # episodes planned together
    time_budget_s: float | None = None # per-plan deadline (anytime planning); null: none
    cuda_graph: bool = False           # replay each solve as one captured CUDA graph (CUDA only)
    precision: str = "fp32"            # the predictor's dtype while planning: fp32 | bf16 (a bf16 copy:
                                       # faster on GPUs and on CPUs that multiply bf16 in hardware, slower
                                       # on others; on a CPU, wm eval says which this one is)
    compile: bool = False              # torch.compile the energy (compiled before the first episode)
    random_floor: bool = True          # also run uniform random actions on the same tasks
    videos: int = 50                   # episodes that get a video (observation | goal)
    device: str = "auto"
    out: str = "runs/eval"
    overwrite: bool = False
    resume: bool = False               # continue a killed eval after its finished batches (progress.json)
    progress: bool = True

    def __post_init__(self) -> None:
        from worldmodel.model.checkpoint import require_checkpoint

        require_checkpoint(self.checkpoint, "eval")
        for member in self.ensemble:
            require_checkpoint(member, "eval")
        paths = [str(Path(p).resolve()) for p in [self.checkpoint, *self.ensemble]]
        if len(set(paths)) != len(paths):
            raise ValueError(f"ensemble={self.ensemble} repeats a checkpoint (checkpoint={self.checkpoint} is the "
                             "first member): list each other model once")
        if self.resume and self.overwrite:
            raise ValueError("pass only one of resume=true (continue) / overwrite=true (start over)")
        for k in ("episodes", "budget", "goal_offset", "horizon", "receding_horizon", "batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.history is not None and self.history < 1:
            raise ValueError(f"history must be >= 1 (or null: the model's), got {self.history}")
        if self.receding_horizon > self.horizon:
            raise ValueError(f"receding_horizon ({self.receding_horizon}) must be <= horizon ({self.horizon})")
        from worldmodel.model.energy import GOAL_AT

        if self.goal_at not in GOAL_AT:
            raise ValueError(f"goal_at must be one of {', '.join(GOAL_AT)}, got {self.goal_at!r} (LeWM's planning: "
                             "planner=cem receding_horizon=5 goal_at=last_chunk)")
        if self.step_weights is not None:
            w = self.step_weights
            if not valid_step_weights(w, self.horizon):
                raise ValueError(f"step_weights={w}: one finite weight >= 0 per planned chunk, {self.horizon} "
                                 f"of them (horizon={self.horizon}), not all 0; e.g. "
                                 f"step_weights=[{','.join(['1'] * self.horizon)}], or null for the last chunk only")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds (or null: no deadline), got {self.time_budget_s}")
        if self.tasks not in TASK_DRAWS:
            raise ValueError(f"tasks must be one of {', '.join(TASK_DRAWS)}, got {self.tasks!r}")
        if self.data is not None and self.tasks != "training":
            raise ValueError("data= names the dataset of tasks=training; drop it, or pass tasks=training")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not self.planner:                         # a typed call that names none: wm eval's default preset
            from worldmodel.config import default_choice, preset

            self.planner = preset("planner", default_choice("eval", "planner"))
        from worldmodel.planners import planner_from_config

        planner_from_config(self.planner)           # an unknown planner, key or value is refused here
        proposes = self.planner.get("name") == "policy" or self.planner.get("proposal") is True
        if proposes and not self.distilled:
            raise ValueError("this planner acts on a distilled policy's proposal: pass distilled=<policy.pt> (make one "
                             f"with wm distill checkpoint={self.checkpoint or '<best.pt>'} out=runs/distill/<name>)")
        if self.distilled is not None and not Path(self.distilled).is_file():
            raise FileNotFoundError(f"distilled={self.distilled!r} does not exist; make it with wm distill "
                                    f"checkpoint={self.checkpoint} out=<dir> (it writes <dir>/policy.pt)")
        if self.cuda_graph and proposes:
            raise ValueError("a distilled policy's proposal is not captured in a CUDA graph; drop cuda_graph=true")


@dataclass
class CheckConfig:
    checkpoint: str = ""               # a best.pt / last.pt written by `wm train`
    data: str | None = None            # null: the training data's held-out episodes; a path: all its episodes
    tasks: int = 100                   # (start, goal) windows scored
    goal_offset: int = 25              # goal = the frame this many env steps after the start
    decoys: int = 31                   # other tasks' recorded actions each task's own are ranked against
    noise: list = field(default_factory=lambda: [0.1, 0.3, 1.0])   # noisy copies' stds (x half-range)
    planner: dict = field(default_factory=dict)   # the planner group (configs/planner/<name>.yaml)
    batch: int = 50                    # tasks planned together
    seed: int = 0                      # task windows and decoys (the planner has planner.seed)
    plan: bool = True                  # also run the planner on every task (false: the model alone, fast)
    grid: int = 8                      # tasks drawn in check.png
    device: str = "auto"
    out: str = "runs/check"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from worldmodel.model.checkpoint import require_checkpoint

        require_checkpoint(self.checkpoint, "check")
        for k in ("tasks", "goal_offset", "decoys", "batch"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if not self.noise or not all(isinstance(x, (int, float)) and x > 0 for x in self.noise):
            raise ValueError(f"noise must be a list of stds > 0 (fractions of the action bounds' half-range), "
                             f"e.g. noise=[0.1,0.3,1.0]; got {self.noise}")
        if self.tasks < 2:
            raise ValueError("tasks must be >= 2: each task's actions are ranked against other tasks'")
        if self.planner:
            from worldmodel.planners import planner_from_config

            planner_from_config(self.planner)       # an unknown planner, key or value is refused here


@dataclass
class CompareConfig:
    """wm compare: several `wm eval` results on the same tasks, with paired tests against the first."""

    runs: list[str] = field(default_factory=list)  # `wm eval` out= dirs, results.json or reproduce.py records
    names: list[str] | None = None  # a label per run (repeat one to pool seeds); null: from the paths
    out: str | None = None          # a directory for compare.json and compare.png; null: print only
    planner_seeds: bool = False     # a reproduce.py record: all its (training seed, planner seed) evals
    seeds: list[int] | None = None  # a reproduce.py record's training seeds to take; null: all it holds

    def __post_init__(self) -> None:
        from worldmodel.config import ConfigError

        if len(self.runs) < 2:
            raise ConfigError("compare needs two or more evaluations: wm compare runs/a/eval runs/b/eval")
        if self.names is not None and len(self.names) != len(self.runs):
            raise ConfigError(f"names has {len(self.names)} labels for {len(self.runs)} runs; give one per run")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ConfigError(f"seeds={self.seeds}: list the training seeds to take from each record once, "
                              "e.g. seeds=[0], or leave it null for all")
