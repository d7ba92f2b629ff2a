"""One optimisation step of `wm train`: the loss module, the LR schedule, the optimiser, autocast,
and `train_step` itself (forward, SIGReg, backward, clip, AdamW, LR step; no host sync).

The `Trainer` (trainer.py) runs it in its loop; the training benchmarks time exactly this code.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from worldmodel.model.world_model import WorldModel
from worldmodel.training.config import CUDA_GRAPH_MODES

if TYPE_CHECKING:
    from worldmodel.training.config import TrainConfig


class _ClipLoss(nn.Module):
    """forward = WorldModel.loss, so DDP (which hooks forward) wraps the whole training computation.
    Returns (teacher-forced MSE, open-loop MSE or 0 when `open_loop` is off, latents)."""

    def __init__(self, model: WorldModel, open_loop: bool = False, open_loop_detach: bool = False):
        super().__init__()
        self.model = model
        self.open_loop, self.open_loop_detach = open_loop, open_loop_detach

    def forward(self, pixels: torch.Tensor, actions: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model.loss(pixels, actions, self.open_loop, self.open_loop_detach)
        ol = out["open_loop"] if self.open_loop else torch.zeros_like(out["pred"])
        return out["pred"], ol, out["z"]                               # scalar, scalar, (B, T, D)


def clip_loss(model: WorldModel, cfg: TrainConfig) -> _ClipLoss:
    """The training computation `cfg` asks for (used by `wm train` and benchmarks/train_speed.py)."""
    return _ClipLoss(model, cfg.open_loop_weight > 0, cfg.open_loop_detach)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def step_seed(seed: int, step: int) -> int:
    """Seed of the SIGReg directions at `step`: identical on every rank, fresh every step."""
    return (seed * 1_000_003 + step * 7919 + 17) % (2**62)


def compile_loss(loss_mod: nn.Module, mode: str) -> nn.Module:
    """torch.compile the training computation. The CUDA-graph modes replay the whole compiled step
    with one launch instead of one per kernel: a step of many small kernels is bound by their
    launches on a GPU."""
    return torch.compile(loss_mod, mode=None if mode == "default" else mode)


def train_step(loss_mod: nn.Module, model: WorldModel, opt: torch.optim.Optimizer, sched: Any,
               batches: list[tuple[torch.Tensor, torch.Tensor]], cfg: TrainConfig, step: int,
               amp: Any) -> torch.Tensor:
    """One optimisation step on `cfg.accum_steps` clip batches (pixels, actions), their gradients
    averaged; returns the batches' mean (loss, pred, sigreg, open_loop) and the grad norm as
    (loss, pred, sigreg, grad_norm, open_loop) on device.

    `loss_mod` is `clip_loss(model, cfg)`, possibly wrapped by DDP / torch.compile. No host sync.
    Under DDP only the last batch's backward all-reduces (the others run under `no_sync`, their
    gradients accumulating locally): one gradient all-reduce per step, whatever accum_steps is.

    SIGReg's statistic is N x a squared distance, so its pull toward the Gaussian grows with the
    batch. Each accumulated batch's statistic enters the loss scaled by accum_steps, i.e. counted at
    the step's N = batch_size x accum_steps, so accumulating keeps the full batch's pull (unscaled,
    it would pull like the small batch, and docs/results.md shows planning suffers). The returned sigreg
    is the unscaled per-batch statistic.
    """
    from worldmodel.model.sigreg import sigreg

    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(step_seed(cfg.seed, step))
    opt.zero_grad(set_to_none=True)
    no_sync = getattr(loss_mod, "no_sync", None)     # DDP's (torch.compile's wrapper forwards it)
    stats = []
    for i, (pixels, actions) in enumerate(batches):
        pixels = pixels.to(device, non_blocking=True)                  # (b, T, H, W, 3) uint8
        actions = actions.to(device, non_blocking=True)                # (b, T-1, chunk)
        if cfg.compile and cfg.compile_mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()   # a new replay: the last one's outputs are free
        # DDP decides in the forward whether the backward all-reduces: both inside the context.
        with no_sync() if no_sync is not None and i < len(batches) - 1 else nullcontext():
            with amp:
                pred, ol, z = loss_mod(pixels, actions)                # scalar, scalar, (b, T, D)
            # SIGReg outside autocast: its projections must stay fp32; global batch under DDP (its
            # own all-reduce, not DDP's). Each batch draws its own directions from the step's generator.
            reg = sigreg(z, cfg.sigreg_directions, cfg.sigreg_knots, generator=g)
            loss = pred.float() + cfg.open_loop_weight * ol.float() + cfg.sigreg_weight * len(batches) * reg
            (loss / len(batches)).backward()
        stats.append(torch.stack([loss.detach(), pred.detach().float(), reg.detach(), ol.detach().float()]))
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    sched.step()
    loss, pred, reg, ol = torch.stack(stats).mean(0)                  # (4,) means over the batches
    return torch.stack([loss, pred, reg, gnorm.float(), ol])           # (5,)


def check_model_fits(model_cfg: Any, device: torch.device) -> None:
    """Refuse, before it is built, a model whose training state (weights, gradients and AdamW's two
    moments: 16 bytes a parameter, activations not counted) exceeds the memory `device` has free;
    counted on torch's meta device, where building allocates nothing."""
    from worldmodel.machine import check_memory

    with torch.device("meta"):
        n = sum(p.numel() for p in WorldModel(model_cfg).parameters())
    fix = "choose a smaller model (model=tiny or smaller model.* widths and depths)"
    what = f"a {n / 1e6:.1f}M-parameter model's training state"
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        if 16 * n > free:
            raise ValueError(f"{what} needs {16 * n / 2 ** 30:.3g} GiB and {device} has {free / 2 ** 30:.3g} GiB "
                             f"free: {fix}")
        check_memory(4 * n, what, fix)                 # built on the host, then moved
    else:
        check_memory(16 * n, what, fix)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW + LambdaLR(linear warmup, cosine decay) per `cfg`. The fused AdamW kernel (one pass over
    all parameters) on CPU and CUDA: the same update up to rounding, in a fraction of the per-tensor
    loop's time on the CPU. Build it after the model is on its device."""
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps, cfg.min_lr_ratio))
    return opt, sched


def autocast_for(cfg: TrainConfig, device: torch.device) -> Any:
    """bf16 autocast on CUDA (precision=auto|bf16), nothing on CPU unless precision=bf16."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
