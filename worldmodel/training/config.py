"""`wm train`'s typed config: the model, the data and how clips are cut, the optimisation. No torch."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from worldmodel.model.config import ModelConfig


@dataclass
class DataConfig:
    """Which data and how clips are cut (clip geometry history/frameskip comes from the model)."""

    path: str | None = None          # dataset directory or a single LeWM-style .h5 file
    n_preds: int = 1                 # predicted frames per clip (clip = history + n_preds frames)
    val_fraction: float = 0.1        # held-out episodes for validation
    split_seed: int = 0              # episode split (fixed across resumes)
    episodes: int | None = None      # use only the first n episodes (None: all)
    prefetch: int = 2                # batches gathered ahead by a background thread (0: off)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")    # the torch.compile modes that capture CUDA graphs
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/train"
    steps: int = 2000
    batch_size: int = 64             # global batch (split across DDP ranks)
    accum_steps: int = 1             # batches of batch_size whose gradients one optimiser step averages:
                                     # batch_size x accum_steps clips per step in the memory of batch_size
    lr: float = 3e-4
    weight_decay: float = 1e-3
    warmup_steps: int | None = None  # None: 5% of steps (at most 1000)
    min_lr_ratio: float = 0.0        # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    sigreg_weight: float = 0.09      # LeWM's lambda at its batch 128; the statistic is N x a distance,
                                     # so a fixed lambda pulls harder on a larger batch (N: batch_size x
                                     # accum_steps; each accumulated batch's statistic counts at that N)
    open_loop_weight: float = 0.0    # + this x the MSE of the predictor rolled out on its own outputs
                                     # over the clip's n_preds chunks, as planning runs it (n_preds >= 2)
    open_loop_detach: bool = False   # that term trains the predictor only (latents detached): the
                                     # encoder is not pulled towards easily predicted latents
    sigreg_directions: int = 1024
    sigreg_knots: int = 17
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda | cuda:N
    precision: str = "auto"          # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32 (bf16 autocast; faster
                                     # on a CPU with bf16 hardware, and wm train says so there)
    compile: bool = False
    compile_mode: str = "default"    # torch.compile mode; reduce-overhead adds CUDA graphs (one GPU only)
    threads: int = 0                 # torch intra-op CPU threads (0: torch's default)
    resume: bool = False
    overwrite: bool = False
    stop_at: int | None = None       # end this invocation after this step (keeps the `steps` schedule)
    eval_every: int = 250
    eval_clips: int = 1024           # held-out clips per evaluation (a fixed, spread-out subset)
    ckpt_every: int = 500
    bn_calibration_batches: int = 16  # re-estimate BatchNorm statistics before eval/checkpoints (0: off)
    log_every: int = 10
    tensorboard: bool = True
    plots: bool = True               # redraw curves.png (worldmodel/report/plots.py) at every last.pt save
    progress: bool = True
    warmup: int = field(init=False)

    def __post_init__(self) -> None:
        for f in fields(self):                       # NaN and Inf pass `x > 0`-style checks: refuse them by name
            v = getattr(self, f.name, None)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v}")
        if not math.isfinite(self.data.val_fraction):
            raise ValueError(f"data.val_fraction must be a finite number, got {self.data.val_fraction}")
        bounds = [(k, 1) for k in ("steps", "batch_size", "accum_steps", "eval_every", "ckpt_every", "log_every",
                                   "eval_clips", "sigreg_directions", "stop_at")]
        bounds += [("sigreg_knots", 2), ("threads", 0), ("bn_calibration_batches", 0), ("warmup_steps", 0)]
        for k, least in bounds:                      # None (stop_at, warmup_steps): the default
            if getattr(self, k) is not None and getattr(self, k) < least:
                raise ValueError(f"{k} must be >= {least}, got {getattr(self, k)}")
        for k, ok, need in (("lr", self.lr > 0, "> 0"), ("grad_clip", self.grad_clip > 0, "> 0"),
                            ("sigreg_weight", self.sigreg_weight >= 0, ">= 0"),
                            ("weight_decay", self.weight_decay >= 0, ">= 0"),
                            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]")):
            if not ok:
                raise ValueError(f"{k} must be {need}, got {getattr(self, k)}")
        if self.open_loop_weight < 0:
            raise ValueError(f"open_loop_weight must be >= 0, got {self.open_loop_weight}")
        if self.open_loop_weight > 0 and self.data.n_preds < 2:
            raise ValueError(f"open_loop_weight={self.open_loop_weight} needs clips with at least 2 predicted "
                             f"frames to roll out over; set data.n_preds >= 2 (e.g. 5, the planning "
                             f"horizon), got data.n_preds={self.data.n_preds}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        auto = min(1000, max(1, self.steps // 20))
        self.warmup = auto if self.warmup_steps is None else self.warmup_steps
