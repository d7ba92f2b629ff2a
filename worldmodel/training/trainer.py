"""`wm train`: train a JEPA world model with SIGReg on a collected dataset.

    wm train data=runs/tworoom model=tiny steps=3000 out=runs/wm_tiny
    torchrun --nproc_per_node=2 -m worldmodel.cli train data=... model=lewm     # same command, DDP

loss = teacher-forced next-latent MSE [+ open_loop_weight * open-loop rollout MSE over the clip's
n_preds chunks] + sigreg_weight * SIGReg(z) over the GLOBAL batch; AdamW with
linear warmup + cosine decay, grad clip, bf16 autocast on CUDA. Every `eval_every` steps the
held-out episodes give the prediction loss next to the "predict no change" baseline
(mse(z_t, z_{t+1}) with the same encoder) and collapse diagnostics (SIGReg, per-dim std, effective
rank). `last.pt` / `best.pt` are written atomically with the full trainer state, so `resume=true`
continues bit-exactly (same step, LR, optimizer, RNG and data order), also after a kill -9.
metrics.csv (+ TensorBoard) logs every scalar; curves.png draws them at every `last.pt` save.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from worldmodel.data.clips import ClipDataset, ClipLoader, ClipSampler, ClipSpec, action_problems, split_episodes
from worldmodel.config import to_dict
from worldmodel.io import exclusive_lock, save_resolved
from worldmodel.training.distributed import gather_rng_states, init_distributed, ranks_in_sync
from worldmodel.machine import print_precision_note, resolve_device
from worldmodel.training.logger import RunLogger
from worldmodel.model.config import ModelConfig
from worldmodel.model.world_model import WorldModel
from worldmodel.training.config import TrainConfig
from worldmodel.report.plots import plot_training, safe_draw
from worldmodel.training.config import CUDA_GRAPH_MODES
from worldmodel.training.step import (autocast_for, build_optimizer, clip_loss, compile_loss, step_seed,
                             train_step)
from worldmodel.training.validation import collapse_note, evaluate, recalibrate_batchnorm

CONFIG_NAME = "train"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.json", "tb", "curves.png")
# what precision=bf16 gave on a CPU where it pays, for precision_note (README: bf16 training on a CPU)
TRAIN_BF16_GAIN = ("the tiny preset's step 1.78x faster on a 2-core AMD EPYC; TwoRoom planned 124 vs 120 of 150 "
                   "tasks after it")




class DivergedError(ValueError):
    """Loss became NaN/Inf; training stopped and the last good checkpoint was left in place."""


# ------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------
def prepare_data(cfg: TrainConfig) -> tuple[ModelConfig, ClipDataset, ClipDataset | None, dict]:
    """Load the dataset, check it fits the model (refusing before any training), split by episode.

    Returns the model config with action_dim filled from the data, train and val clips, and meta.
    """
    from worldmodel.data.dataset import load_dataset

    if not cfg.data.path:
        raise ValueError("no dataset given: pass data=PATH (a `wm collect` directory or a LeWM .h5 file)")
    ds = load_dataset(cfg.data.path, columns=("pixels", "action", "state"), episodes=cfg.data.episodes)
    pixels, action = ds.pixels, ds.action
    h, w = pixels.shape[1:3]
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"{cfg.data.path}: pixels must be (N, H, W, 3) uint8, got "
                         f"{pixels.shape} {pixels.dtype}")
    if (h, w) != (cfg.model.image_size, cfg.model.image_size):
        patch = cfg.model.patch_size
        fit = (f"pass model.image_size={h}" if h % patch == 0 else
               f"pass model.image_size={h} with a model.patch_size dividing it (e.g. "
               f"{max(d for d in range(1, max(1, h // 8) + 1) if h % d == 0)}; this model's {patch} does not)")
        raise ValueError(f"dataset frames are {h}x{w} but model.image_size={cfg.model.image_size}: {fit}, or "
                         f"re-collect with image_size={cfg.model.image_size}")
    problems = action_problems(action, ds.ep_len, ds.ep_offset, ds.meta)
    if problems["out_of_bounds"]:
        ep, t = problems["first_out_of_bounds"]
        raise ValueError(f"{cfg.data.path}: {problems['out_of_bounds']} action rows lie outside the recorded bounds "
                         f"[{ds.meta['action_low']}, {ds.meta['action_high']}] (first: episode {ep}, step {t}); "
                         "they would skew the action normalisation and can never be planned: repair or drop those "
                         "episodes (data.episodes=...), or re-collect (`wm inspect` lists the problems)")
    model_cfg = dataclasses.replace(cfg.model, action_dim=int(action.shape[1]))
    spec = ClipSpec(model_cfg.history, cfg.data.n_preds, model_cfg.frameskip)
    short = int((ds.ep_len < spec.min_episode_len).sum())
    train_eps, val_eps = split_episodes(ds.ep_len, spec, cfg.data.val_fraction, cfg.data.split_seed)
    if short:
        print(f"note: {short} of {ds.num_episodes} episodes are shorter than the "
              f"{spec.min_episode_len} rows a clip needs and are skipped")
    train = ClipDataset(ds, spec, train_eps)
    val = ClipDataset(ds, spec, val_eps) if len(val_eps) else None
    if len(train) == 0:
        raise ValueError(f"{cfg.data.path}: no training clip survives (NaN actions?); check with `wm inspect`")
    if problems["nonfinite"]:
        print(f"note: {problems['nonfinite']} action rows inside episodes are NaN/Inf; clips touching them are skipped")
    if cfg.batch_size > len(train):
        raise ValueError(f"batch_size={cfg.batch_size} but the data hold only {len(train)} training clips (every "
                         f"clip would repeat within a batch): pass batch_size<={len(train)}, or collect more episodes")
    return model_cfg, train, val, ds.meta


def _prepare_out(cfg: TrainConfig, rank: int, held: list[Any]) -> Path | None:
    """The checkpoint to resume from, or None; on rank 0 it takes the run's lock (one `wm train` per
    out= at a time) into `held`; refuses to clobber a run unless overwrite=true."""
    from worldmodel.data import dataset as D

    out = Path(cfg.out)
    last = out / "last.pt"
    if (out / D.META).exists() or any(out.glob("shard_*.h5")):   # its config.json is the collection's
        raise FileExistsError(f"out={out} is a dataset (meta.json, shards); train into another out=, "
                              f"e.g. out=runs/{out.name}")
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        held.append(exclusive_lock(out / ".train.lock", f"another `wm train` is writing {out}; wait for it to "
                                     "finish, or kill it and re-run with resume=true (or choose another out=)"))
        for stale in out.glob("*.pt.*.tmp"):        # a save cut short by kill -9 (no writer now: we hold the lock)
            stale.unlink()
    if cfg.resume:
        if last.exists():
            return last
        if (out / "best.pt").exists():
            raise FileExistsError(f"resume=true but {out} holds best.pt and no last.pt to resume from (a run "
                                  "killed while saving, or from before every best.pt came with a last.pt); "
                                  "pass overwrite=true to start over (deletes best.pt), or another out=")
        if rank == 0:
            print(f"resume=true but {last} does not exist yet: starting a fresh run")
    existing = [n for n in RUN_FILES if (out / n).exists()]
    if existing and not cfg.resume and not cfg.overwrite:
        raise FileExistsError(f"{out} already holds a training run ({', '.join(existing)}); pass "
                              "resume=true to continue it, overwrite=true to start over, or another out=")
    if rank == 0:
        for n in existing:
            p = out / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


class StopAtStepEnd:
    """Ctrl-C (SIGINT) during single-process training: `requested` turns true, the loop finishes its
    step, saves last.pt and stops, so the run resumes from there; a second Ctrl-C interrupts at once.
    Not under DDP (ranks would see the signal at different steps) nor off the main thread."""

    def __init__(self, enabled: bool) -> None:
        self.requested, self._old = False, None
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._old)

    def close(self) -> None:
        if self._old is not None and signal.getsignal(signal.SIGINT) == self._handle:
            signal.signal(signal.SIGINT, self._old)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------
# What a resumed run must keep: the optimiser state, schedule, data order and split come from the
# checkpoint, so a changed value here would be silently ignored (steps, stop_at, logging, device and
# compile settings may change).
RESUME_FIXED = ("lr", "weight_decay", "warmup_steps", "min_lr_ratio", "grad_clip", "sigreg_weight",
                "open_loop_weight", "open_loop_detach", "sigreg_directions", "sigreg_knots", "batch_size",
                "accum_steps", "seed", "precision")
RESUME_FIXED_DATA = ("n_preds", "val_fraction", "split_seed", "episodes")


def check_resume(ckpt: dict, model_cfg: ModelConfig, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume the checkpoint `ckpt` (read from `path`) with another model or with different
    training settings."""
    if ckpt["model_config"] != model_cfg.to_dict():
        diff = {k: (ckpt["model_config"].get(k), v) for k, v in model_cfg.to_dict().items()
                if ckpt["model_config"].get(k) != v}
        raise ValueError(f"resume=true but the model differs from {path} "
                         f"(checkpoint vs now: {diff}); use the run's model overrides or a new out=")
    saved, now = ckpt["extra"]["config"], to_dict(cfg)
    # A setting added after the checkpoint was written had its default then.
    default = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in RESUME_FIXED}
    pairs = [(k, saved.get(k, default[k]), now[k]) for k in RESUME_FIXED] + \
            [(f"data.{k}", saved.get("data", {}).get(k), now["data"][k]) for k in RESUME_FIXED_DATA]
    diff = {k: (old, new) for k, old, new in pairs if old != new}
    if diff:
        raise ValueError(f"resume=true but the training settings differ from {path} (checkpoint vs "
                         f"now: {diff}); resume with the run's settings, or start a new run with "
                         "overwrite=true or another out=")


def check_compile(cfg: TrainConfig, world: int) -> None:
    """Refuse, before any work, CUDA-graph compilation under DDP (its all-reduce hooks run between
    the graphed pieces; untested here)."""
    if cfg.compile and world > 1 and cfg.compile_mode in CUDA_GRAPH_MODES:
        raise ValueError(f"compile_mode={cfg.compile_mode} (CUDA graphs) is for one process; under "
                         "torchrun use compile_mode=default or max-autotune-no-cudagraphs")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train per `cfg`; returns (and prints) the final metrics."""
    rank, world, local_rank, owned = init_distributed()
    held: list[Any] = []                         # the run's lock, taken by _prepare_out on rank 0
    try:
        return _train(cfg, rank, world, local_rank, held)
    finally:
        for fh in held:                          # released here, whatever the ending (a traceback kept
            fh.close()                           # alive by the caller would otherwise keep it)
        if owned:
            dist.destroy_process_group()


def _train(cfg: TrainConfig, rank: int, world: int, local_rank: int, held: list[Any]) -> dict[str, Any]:
    from tqdm import tqdm

    from worldmodel.model.checkpoint import load_checkpoint, save_checkpoint

    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {world} processes")
    check_compile(cfg, world)
    device = resolve_device(cfg.device, local_rank)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model_cfg, train, val, meta = prepare_data(cfg)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    resume_from = _prepare_out(cfg, rank, held)
    if world > 1:
        dist.barrier()
    out = Path(cfg.out)
    amp = autocast_for(cfg, device)

    torch.manual_seed(cfg.seed)                                        # same init on every rank
    model = WorldModel(model_cfg).to(device)
    model.set_action_stats(*train.action_stats())
    torch.manual_seed(cfg.seed + 1 + rank)                             # per-rank dropout streams
    opt, sched = build_optimizer(model, cfg)
    sampler = ClipSampler(len(train), cfg.batch_size // world, cfg.seed, rank, world)
    step, best, extra = 0, math.inf, {}
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from, map_location="cpu")
        check_resume(ckpt, model_cfg, cfg, resume_from)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        step, extra = int(ckpt["step"]), ckpt["extra"]
        sampler.load_state_dict(extra["sampler"])
        best = float(extra.get("best_val", math.inf))
        rng = extra["rng"][rank] if rank < len(extra["rng"]) else extra["rng"][0]
        torch.set_rng_state(rng["cpu"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
        if step >= cfg.steps and rank == 0:
            print(f"{resume_from} is already at step {step} >= steps={cfg.steps}; nothing to train")
    if rank == 0:
        save_resolved(cfg, out)
    loss_mod: nn.Module = clip_loss(model, cfg)
    if world > 1:
        loss_mod = nn.parallel.DistributedDataParallel(
            loss_mod, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        loss_mod = compile_loss(loss_mod, cfg.compile_mode)
    loader = ClipLoader(train, sampler, prefetch=cfg.data.prefetch, pin_memory=device.type == "cuda")
    logger = RunLogger(out, enabled=rank == 0, tensorboard=cfg.tensorboard,
                       resume_step=step if resume_from is not None else None)
    run_cfg = to_dict(cfg)

    calibrated_at = -1

    def calibrate() -> None:
        """BatchNorm statistics for the current weights, once per step that evaluates or saves."""
        nonlocal calibrated_at
        if calibrated_at != step:
            recalibrate_batchnorm(model, train, cfg.bn_calibration_batches, max(1, cfg.batch_size // world),
                                  device, amp, seed=step_seed(cfg.seed, step))
            calibrated_at = step

    def validate() -> dict[str, float]:
        calibrate()
        return evaluate(model, val, cfg.eval_clips, cfg.batch_size // world, device, amp,
                        cfg.sigreg_directions, cfg.sigreg_knots)

    def checkpoint(name: str, metrics: dict[str, float]) -> None:
        calibrate()
        state = {"config": run_cfg, "sampler": loader.state_dict(), "rng": gather_rng_states(device, world),
                 "best_val": best, "metrics": metrics, "dataset_meta": _jsonable(meta)}
        if rank == 0:
            save_checkpoint(out / name, model, opt, sched, step, state)

    if rank == 0:
        n_par = sum(p.numel() for p in model.parameters())
        print(f"training {n_par / 1e6:.2f}M params on {device} x{world} | {len(train)} train clips, "
              f"{len(val) if val else 0} val clips | steps {step}->{cfg.steps}, batch {cfg.batch_size}"
              + (f" x {cfg.accum_steps} accumulated" if cfg.accum_steps > 1 else ""))
        print_precision_note("wm train", cfg.precision, device, TRAIN_BF16_GAIN)
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and rank == 0),
               unit="step", dynamic_ncols=True)
    window: list[torch.Tensor] = []
    t_window, n_window, last_eval = time.perf_counter(), 0, {}
    saved_at = step if resume_from is not None else -1
    last_train: dict[str, float] = {}
    start_step, t_start = step, time.perf_counter()
    model.train()
    end = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)
    ctrl_c = StopAtStepEnd(enabled=world == 1)
    try:
        while step < end:
            batches = [next(loader) for _ in range(cfg.accum_steps)]
            window.append(train_step(loss_mod, model, opt, sched, batches, cfg, step, amp))
            step += 1
            n_window += 1
            bar.update(1)
            do_eval = val is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
            stop = ctrl_c.requested                                    # Ctrl-C: save this step, then stop
            do_ckpt = step % cfg.ckpt_every == 0 or step == end or stop
            if step % cfg.log_every == 0 or do_eval or do_ckpt:
                stats = torch.stack(window)                            # (n, 5)
                agg = torch.cat([stats.nan_to_num(0.0).mean(0), (~torch.isfinite(stats)).any(1).sum()[None]])
                if world > 1:
                    dist.all_reduce(agg)
                    agg[:5] /= world
                vals = agg.tolist()                                    # host sync: once per log window
                window.clear()
                if vals[5] > 0:
                    raise DivergedError(
                        f"loss became NaN/Inf before step {step}; stopped. The last good checkpoint "
                        f"is {out / 'last.pt'} (step {saved_at if saved_at >= 0 else 'none'}). Lower lr "
                        f"(now {cfg.lr}), check the data with `wm inspect`, or resume=true to retry.")
                dt = time.perf_counter() - t_window
                last_train = {"loss": vals[0], "pred": vals[1], "sigreg": vals[2], "grad_norm": vals[3],
                              "lr": sched.get_last_lr()[0],
                              "samples_per_s": n_window * cfg.batch_size * cfg.accum_steps / max(dt, 1e-9)}
                if cfg.open_loop_weight > 0:
                    last_train["open_loop"] = vals[4]
                t_window, n_window = time.perf_counter(), 0
                logger.log(step, last_train)
                bar.set_postfix(loss=f"{vals[0]:.4f}", pred=f"{vals[1]:.4f}",
                                sps=f"{last_train['samples_per_s']:.0f}")
            if do_eval:
                last_eval = validate()
                logger.log(step, last_eval)
                if rank == 0:
                    bar.write(f"step {step}: val_pred {last_eval['val_pred']:.4f} (no-change "
                              f"{last_eval['val_nochange']:.4f}, ratio {last_eval['val_ratio']:.3f}) "
                              f"eff_rank {last_eval['eff_rank']:.1f} std_min {last_eval['std_min']:.3f}"
                              + (f" probe_r2 {last_eval['probe_r2']:.2f}" if "probe_r2" in last_eval else "")
                              + (f" open_loop {last_eval['val_open_loop']:.4f} (ratio "
                                 f"{last_eval['val_open_loop_ratio']:.3f})" if "val_open_loop" in last_eval else "")
                              + collapse_note(last_eval))
                if last_eval["val_pred"] < best:
                    best = last_eval["val_pred"]
                    checkpoint("best.pt", {**last_train, **last_eval})
                    do_ckpt = True                                     # last.pt is never behind best.pt
                t_window = time.perf_counter()                          # eval time is not training speed
            if do_ckpt:
                checkpoint("last.pt", {**last_train, **last_eval})
                saved_at = step
                if rank == 0 and cfg.plots:
                    t_window += safe_draw(plot_training, out)          # drawing is not training time
            if stop:
                bar.write(f"interrupted: saved {out / 'last.pt'} at step {step}; resume=true continues from it")
                raise KeyboardInterrupt
    finally:
        ctrl_c.close()
        bar.close()
        loader.close()
        logger.close()
    if saved_at != step:                                               # resumed at/after the end
        checkpoint("last.pt", {**last_train, **last_eval})
    if val is not None and not last_eval:
        last_eval = validate()
    elapsed = time.perf_counter() - t_start
    if world > 1:
        last_eval["ddp_in_sync"] = ranks_in_sync(model, world)
    result = {"step": step, **last_train, **last_eval, "best_val_pred": best if best < math.inf else None,
              "start_step": start_step,                                  # > 0: resumed; train_s is since then
              "train_s": round(elapsed, 2), "steps_per_s": (step - start_step) / max(elapsed, 1e-9),
              "out": str(out)}
    if rank == 0:
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))
    return result


def _jsonable(obj: Any) -> Any:
    """meta.json content as plain JSON types (safe for weights_only checkpoints)."""
    return json.loads(json.dumps(obj, default=str))
