"""`wm train`'s run as a `Trainer`: setup, the step loop, validation, checkpoints, the result.

`train(cfg)` is the one entry point (`wm train`, `wm demo`, benchmarks): it joins the process group
(torchrun DDP or one process), runs a `Trainer` to the end and releases the run's lock. The loss and
one optimisation step are in step.py, the held-out metrics in validation.py.
"""
from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from worldmodel.config import to_dict
from worldmodel.data.clips import ClipLoader, ClipSampler
from worldmodel.io import mark_output, save_resolved
from worldmodel.machine import print_precision_note, resolve_device
from worldmodel.model.checkpoint import load_checkpoint, rewrite_checkpoint, save_checkpoint
from worldmodel.model.world_model import WorldModel
from worldmodel.report.plots import plot_training, safe_draw
from worldmodel.training.config import CUDA_GRAPH_MODES, TrainConfig
from worldmodel.training.data import prepare_data
from worldmodel.training.distributed import gather_rng_states, init_distributed, ranks_in_sync
from worldmodel.training.logger import RunLogger
from worldmodel.training.run_dir import check_resume, claim_out, resume_point
from worldmodel.training.step import (autocast_for, build_optimizer, check_model_fits, clip_loss, compile_loss,
                                      step_seed)
from worldmodel.training.step import train_step as optimiser_step
from worldmodel.training.validation import (collapse_note, evaluate, held_out_errors, recalibrate_batchnorm,
                                           surprise_reference)

__all__ = ["Trainer", "train", "TrainConfig", "DivergedError", "check_compile", "check_resume"]

# what precision_note says bf16 gives `wm train` on a CPU where it pays (docs/speed.md has the measurements)
TRAIN_BF16_GAIN = "bf16 autocast speeds up the whole training step on such a CPU"


class DivergedError(ValueError):
    """Loss became NaN/Inf; training stopped and the last good checkpoint was left in place."""


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train per `cfg`; returns (and prints) the final metrics."""
    rank, world, local_rank, owned = init_distributed()
    try:
        with Trainer(cfg, rank, world, local_rank) as trainer:
            return trainer.fit()
    finally:
        if owned:
            dist.destroy_process_group()


class Trainer:
    """One `wm train` run on this process (one rank under DDP).

    Construction checks the config and data (refusing before any output), claims `cfg.out` and
    builds the model, optimiser, LR schedule, data stream and logger, continuing from last.pt when
    `cfg.resume` finds one. `fit()` trains to the end. Use it as a context manager (or call
    `close()`) so that the run's lock is released whatever the ending.
    """

    def __init__(self, cfg: TrainConfig, rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.rank, self.world = rank, world
        self.lock: Any = None                          # out='s lock, held by rank 0 until close()
        self.loader: ClipLoader | None = None
        self.logger: RunLogger | None = None
        try:
            self._prepare(cfg, local_rank)             # config, device, data: no output yet
            resume_from = self._claim_out()            # out= locked, cleaned or resumed
            self._build(resume_from)                   # model, optimiser, data stream, logger
        except BaseException:
            self.close()                               # a refused resume leaves out= unlocked
            raise

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the data thread, close the logs, release the run's lock. Explicit, not left to the
        garbage collector: a traceback the caller keeps would keep the lock alive."""
        for part in (self.loader, self.logger, self.lock):
            if part is not None:
                part.close()
        self.lock = None

    # --------------------------------------------------------------------------------------------
    # setup
    # --------------------------------------------------------------------------------------------
    def _prepare(self, cfg: TrainConfig, local_rank: int) -> None:
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the {self.world} processes")
        check_compile(cfg, self.world)
        self.device = resolve_device(cfg.device, local_rank)
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        model_cfg, self.train_clips, self.val_clips, meta = prepare_data(cfg)
        check_model_fits(model_cfg, self.device)
        self.cfg = dataclasses.replace(cfg, model=model_cfg)
        self.run_cfg, self.meta = to_dict(self.cfg), _jsonable(meta)   # as checkpoints store them
        self.out, self.amp = Path(cfg.out), autocast_for(self.cfg, self.device)
        self.end = cfg.steps if cfg.stop_at is None else min(cfg.steps, cfg.stop_at)

    def _claim_out(self) -> Path | None:
        """Lock and clean out= (rank 0; the others wait for it); the checkpoint to resume or None."""
        self.lock = claim_out(self.cfg, self.rank)
        resume_from = resume_point(self.cfg, self.rank)
        if self.world > 1:
            dist.barrier()
        return resume_from

    def _build(self, resume_from: Path | None) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)                                    # same init on every rank
        self.model = WorldModel(cfg.model).to(self.device)
        self.model.set_action_stats(*self.train_clips.action_stats())
        torch.manual_seed(cfg.seed + 1 + self.rank)                    # per-rank dropout streams
        self.opt, self.sched = build_optimizer(self.model, cfg)
        self.sampler = ClipSampler(len(self.train_clips), cfg.batch_size // self.world, cfg.seed,
                                   self.rank, self.world)
        self.step, self.best = 0, math.inf
        if resume_from is not None:
            self._resume(resume_from)
        if self.rank == 0:
            mark_output(self.out, "wm train")                          # overwrite=true's proof of ownership
            save_resolved(cfg, self.out)
        self.loss_mod = self._wrap_loss()
        self.loader = ClipLoader(self.train_clips, self.sampler, prefetch=cfg.data.prefetch,
                                 pin_memory=self.device.type == "cuda")
        self.logger = RunLogger(self.out, enabled=self.rank == 0, tensorboard=cfg.tensorboard,
                                resume_step=self.step if resume_from is not None else None)
        self.saved_at = self.step if resume_from is not None and resume_from.name == "last.pt" else -1  # last.pt's step
        self.calibrated_at = -1                                        # step of the BN statistics
        self.last_train: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.window: list[torch.Tensor] = []                           # (5,) per step since the last log
        self.n_window, self.start_step = 0, self.step
        self.t_window = self.t_start = time.perf_counter()             # fit() restarts both clocks

    def _resume(self, path: Path) -> None:
        """Continue from checkpoint `path` bit-exactly: weights, optimiser, schedule, step, data
        cursor, best val and this rank's RNG (refused if the model or a fixed setting changed).
        Part of the setup: the data stream and logger are built from what it restores."""
        ckpt = load_checkpoint(path, map_location="cpu")
        check_resume(ckpt, self.cfg.model, self.cfg, path)
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.step, extra = int(ckpt["step"]), ckpt["extra"]
        self.sampler.load_state_dict(extra["sampler"])
        self.best = float(extra.get("best_val", math.inf))
        rng = extra["rng"][self.rank] if self.rank < len(extra["rng"]) else extra["rng"][0]
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.step >= self.cfg.steps and self.rank == 0:
            print(f"{path} is already at step {self.step} >= steps={self.cfg.steps}; nothing to train")

    def _wrap_loss(self) -> nn.Module:
        """The training computation, wrapped by DDP (several processes) and torch.compile (compile=true)."""
        loss_mod: nn.Module = clip_loss(self.model, self.cfg)
        if self.world > 1:
            loss_mod = nn.parallel.DistributedDataParallel(
                loss_mod, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            loss_mod = compile_loss(loss_mod, self.cfg.compile_mode)
        return loss_mod

    # --------------------------------------------------------------------------------------------
    # the loop
    # --------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from the current step to `steps` (or `stop_at`), logging, validating and saving on
        the config's schedule; returns (and prints) `result()`. Ctrl-C or SIGTERM (what schedulers and
        service managers send; one process only) finishes the step, saves last.pt and raises
        KeyboardInterrupt. Call it once."""
        from tqdm import tqdm

        self._print_header()
        self.bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not (self.cfg.progress and self.rank == 0),
                        unit="step", dynamic_ncols=True)
        self.t_window = self.t_start = time.perf_counter()
        self.model.train()
        ctrl_c = StopAtStepEnd(enabled=self.world == 1)
        try:
            while self.step < self.end:
                self.train_step()
                self.bar.update(1)
                stop = ctrl_c.requested                                # Ctrl-C: save this step, then stop
                self._after_step(stop)
                if stop:
                    self.bar.write(f"interrupted: saved {self.out / 'last.pt'} at step {self.step}; "
                                   "resume=true continues from it")
                    raise KeyboardInterrupt
        finally:
            ctrl_c.close()
            self.bar.close()
            self.loader.close()
            self.logger.close()
        if self.saved_at != self.step:                                 # resumed at/after the end
            self.save("last.pt")
        if self.val_clips is not None and not self.last_eval:
            self.last_eval = self.validate()
        self._store_surprise_reference()
        result = self.result()
        if self.rank == 0:
            print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()}))
        return result

    def train_step(self) -> None:
        """One optimisation step on `accum_steps` batches; its stats join the log window, still on
        the device (no host sync)."""
        batches = [next(self.loader) for _ in range(self.cfg.accum_steps)]
        stats = optimiser_step(self.loss_mod, self.model, self.opt, self.sched, batches, self.cfg,
                               self.step, self.amp)     # (5,): loss, pred, sigreg, grad_norm, open_loop
        self.window.append(stats)
        self.step += 1
        self.n_window += 1

    def _after_step(self, stop: bool) -> None:
        """What the schedule asks for after this step: a log line, a validation (best.pt when it
        improves), a last.pt save; all of them at the end, and a save on Ctrl-C (`stop`)."""
        cfg, step = self.cfg, self.step
        do_eval = self.val_clips is not None and (step % cfg.eval_every == 0 or step == cfg.steps)
        do_save = step % cfg.ckpt_every == 0 or step == self.end or stop
        if step % cfg.log_every == 0 or do_eval or do_save:
            self._log_window()
        if do_eval and self._validate_and_report():
            do_save = True                                             # last.pt is never behind best.pt
        if do_save:
            self.save("last.pt")
            self.saved_at = step
            if self.rank == 0 and self.cfg.plots:
                self.t_window += safe_draw(plot_training, self.out)    # drawing is not training time

    def _log_window(self) -> None:
        """Log the mean of the steps since the last log (over all ranks) to metrics.csv, TensorBoard
        and the progress bar; DivergedError if any of those steps had a NaN/Inf."""
        stats = torch.stack(self.window)                               # (n, 5)
        bad = (~torch.isfinite(stats)).any(1).sum()[None]              # (1,) steps with a NaN/Inf
        agg = torch.cat([stats.nan_to_num(0.0).mean(0), bad])          # (6,)
        if self.world > 1:
            dist.all_reduce(agg)
            agg[:5] /= self.world
        loss, pred, reg, gnorm, open_loop, n_bad = agg.tolist()       # host sync: once per log window
        self.window.clear()
        if n_bad > 0:
            raise DivergedError(
                f"loss became NaN/Inf before step {self.step}; stopped. The last good checkpoint is "
                f"{self.out / 'last.pt'} (step {self.saved_at if self.saved_at >= 0 else 'none'}). Lower lr "
                f"(now {self.cfg.lr}), check the data with `wm inspect`, or resume=true to retry.")
        cfg, dt = self.cfg, time.perf_counter() - self.t_window
        self.last_train = {"loss": loss, "pred": pred, "sigreg": reg, "grad_norm": gnorm,
                           "lr": self.sched.get_last_lr()[0],
                           "samples_per_s": self.n_window * cfg.batch_size * cfg.accum_steps / max(dt, 1e-9)}
        if cfg.open_loop_weight > 0:
            self.last_train["open_loop"] = open_loop
        self.n_window, self.t_window = 0, time.perf_counter()
        self.logger.log(self.step, self.last_train)
        self.bar.set_postfix(loss=f"{loss:.4f}", pred=f"{pred:.4f}", sps=f"{self.last_train['samples_per_s']:.0f}")

    def _validate_and_report(self) -> bool:
        """Validate, log and print the line; save best.pt when val_pred improves (returns whether)."""
        self.last_eval = self.validate()
        self.logger.log(self.step, self.last_eval)
        if self.rank == 0:
            self.bar.write(_val_line(self.step, self.last_eval))
        improved = self.last_eval["val_pred"] < self.best
        if improved:
            self.best = self.last_eval["val_pred"]
            self.save("best.pt")
        self.t_window = time.perf_counter()                            # eval time is not training speed
        return improved

    # --------------------------------------------------------------------------------------------
    # validation, checkpoints, result
    # --------------------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Held-out metrics of the current weights (validation.evaluate), BatchNorm statistics
        recalibrated first. A collective under DDP: every rank calls it and gets the same numbers."""
        self._calibrate()
        return evaluate(self.model, self.val_clips, self.cfg.eval_clips, self.cfg.batch_size // self.world,
                        self.device, self.amp, self.cfg.sigreg_directions, self.cfg.sigreg_knots)

    def save(self, name: str) -> None:
        """Write out=/`name` (last.pt, best.pt) atomically with everything an exact resume needs:
        weights (BatchNorm recalibrated), optimiser, schedule, step, data cursor, every rank's RNG,
        best val, metrics. A collective under DDP (the RNG states are gathered); rank 0 writes."""
        self._calibrate()
        state = {"config": self.run_cfg, "sampler": self.loader.state_dict(),
                 "rng": gather_rng_states(self.device, self.world), "best_val": self.best,
                 "metrics": {**self.last_train, **self.last_eval}, "dataset_meta": self.meta}
        if self.rank == 0:                                             # host sync: weights copied to the CPU
            save_checkpoint(self.out / name, self.model, self.opt, self.sched, self.step, state)

    def _store_surprise_reference(self) -> None:
        """best.pt gains its weights' one-step prediction errors on the held-out episodes, the
        reference planners.SurpriseMonitor scores against (goal_policy.surprise_reference_of reads
        it). Rank 0, once training ends; a best.pt that has one is left as it is."""
        path = self.out / "best.pt"
        if self.rank != 0 or self.val_clips is None or not path.is_file():
            return
        ckpt = load_checkpoint(path)
        if "surprise" in ckpt["extra"]:
            return
        model = WorldModel.from_loaded(ckpt, self.device, source=str(path))
        try:
            ckpt["extra"]["surprise"] = surprise_reference(held_out_errors(model, self.val_clips))
        except ValueError as e:                                        # too few held-out windows
            print(f"best.pt has no surprise reference: {e}")
            return
        rewrite_checkpoint(path, ckpt)

    def _calibrate(self) -> None:
        """BatchNorm statistics for the current weights, once per step that evaluates or saves."""
        if self.calibrated_at != self.step:
            recalibrate_batchnorm(self.model, self.train_clips, self.cfg.bn_calibration_batches,
                                  max(1, self.cfg.batch_size // self.world), self.device, self.amp,
                                  seed=step_seed(self.cfg.seed, self.step))
            self.calibrated_at = self.step

    def result(self) -> dict[str, Any]:
        """The run's numbers: step, the last train and val metrics, best val, time since `fit()` began,
        out=. Under DDP a collective: `ddp_in_sync` says whether every rank ends with the same weights."""
        elapsed = time.perf_counter() - self.t_start
        last_eval = dict(self.last_eval)
        if self.world > 1:
            last_eval["ddp_in_sync"] = ranks_in_sync(self.model, self.world)
        return {"step": self.step, **self.last_train, **last_eval,
                "best_val_pred": self.best if self.best < math.inf else None,
                "start_step": self.start_step,                         # > 0: resumed; train_s is since then
                "train_s": round(elapsed, 2), "steps_per_s": (self.step - self.start_step) / max(elapsed, 1e-9),
                "out": str(self.out)}

    def _print_header(self) -> None:
        if self.rank != 0:
            return
        cfg = self.cfg
        n_par = sum(p.numel() for p in self.model.parameters())
        print(f"training {n_par / 1e6:.2f}M params on {self.device} x{self.world} | {len(self.train_clips)} train "
              f"clips, {len(self.val_clips) if self.val_clips else 0} val clips | steps {self.step}->{cfg.steps}, "
              f"batch {cfg.batch_size}" + (f" x {cfg.accum_steps} accumulated" if cfg.accum_steps > 1 else ""))
        print_precision_note("wm train", cfg.precision, self.device, TRAIN_BF16_GAIN)


def _val_line(step: int, m: dict[str, float]) -> str:
    """The line printed after each validation."""
    return (f"step {step}: val_pred {m['val_pred']:.4f} (no-change {m['val_nochange']:.4f}, ratio "
            f"{m['val_ratio']:.3f}) eff_rank {m['eff_rank']:.1f} std_min {m['std_min']:.3f}"
            + (f" probe_r2 {m['probe_r2']:.2f}" if "probe_r2" in m else "")
            + (f" open_loop {m['val_open_loop']:.4f} (ratio {m['val_open_loop_ratio']:.3f})"
               if "val_open_loop" in m else "")
            + collapse_note(m))


class StopAtStepEnd:
    """Ctrl-C (SIGINT) or SIGTERM during single-process training: `requested` turns true, the loop
    finishes its step, saves last.pt and stops, so the run resumes from there; a second signal of the
    same kind acts at once (the previous handler is back). Not under DDP (ranks would see the signal
    at different steps) nor off the main thread. `close()` restores the previous handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool) -> None:
        self.requested, self._old = False, {}
        if enabled and threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self._old[signum])

    def close(self) -> None:
        for sig, old in self._old.items():
            if signal.getsignal(sig) == self._handle:
                signal.signal(sig, old)
        self._old = {}


def check_compile(cfg: TrainConfig, world: int) -> None:
    """Refuse, before any work, CUDA-graph compilation under DDP (its all-reduce hooks run between
    the graphed pieces; untested here)."""
    if cfg.compile and world > 1 and cfg.compile_mode in CUDA_GRAPH_MODES:
        raise ValueError(f"compile_mode={cfg.compile_mode} (CUDA graphs) is for one process; under "
                         "torchrun use compile_mode=default or max-autotune-no-cudagraphs")


def _jsonable(obj: Any) -> Any:
    """meta.json content as plain JSON types (safe for weights_only checkpoints)."""
    return json.loads(json.dumps(obj, default=str))
