"""Training throughput: samples/s (clips of history + n_preds frames) of the real training step.

Builds the model and optimiser exactly as `wm train` does for a preset (configs/model/<preset>),
feeds random clips of the preset's shape (or clips of a real dataset, --data PATH), and times
`worldmodel.training.step.train_step` (forward, SIGReg, backward, clip, AdamW, LR step) with a device sync
at each timing window. Prints one JSON line: the median over windows.

    python -m benchmarks.train_speed --preset tiny                  # CPU, fp32
    python -m benchmarks.train_speed --preset lewm --batch 128      # CUDA: bf16 autocast

--roofline adds benchmarks/roofline.py's floors for one eager step; --datasheet TFLOPS,TBS gives,
without timing anything, the roofline at a device's published peak rates (a GPU not at hand).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.roofline import datasheet, roofline, sync  # noqa: E402


def provenance(device: torch.device) -> dict[str, Any]:
    """Date, commit and machine, as every result line carries them."""
    from benchmarks import recipes as R
    return {"date": datetime.date.today().isoformat(), "git": R.git_commit(), "machine": R.machine(str(device))}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help="configs/model/<preset>.yaml")
    p.add_argument("--batch", type=int, default=None, help="default: the preset's batch_size")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto (bf16 on CUDA) | bf16 | fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default",
                   help="with --compile: default | reduce-overhead (CUDA graphs) | max-autotune | ...")
    p.add_argument("--action-dim", type=int, default=2)
    p.add_argument("--data", default=None, help="time clips of this dataset instead of random ones")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: default)")
    p.add_argument("override", nargs="*", help="extra train config overrides, e.g. model.enc_depth=2")
    return p


def setup(a: argparse.Namespace) -> tuple[Any, torch.device, Any, Any, Any, Any, Any, Callable[[], tuple]]:
    """What `wm train` builds for these arguments: (cfg, device, model, opt, sched, loss_mod, amp,
    batch) where batch() returns one (pixels, actions) clip batch on the host."""
    if a.threads:
        torch.set_num_threads(a.threads)

    from worldmodel.config import load
    from worldmodel.machine import keep_freed_host_memory, resolve_device

    a.malloc_tuned = keep_freed_host_memory()             # as `wm` does (WM_MALLOC_TUNING=0: off)
    from worldmodel.model.world_model import WorldModel
    from worldmodel.training.step import autocast_for, build_optimizer, clip_loss, compile_loss
    from worldmodel.training.trainer import TrainConfig

    ov = [f"model={a.preset}", f"device={a.device}", f"precision={a.precision}",
          f"compile={str(a.compile).lower()}", f"compile_mode={a.compile_mode}", *a.override]
    if a.batch:
        ov.append(f"batch_size={a.batch}")
    cfg = load(TrainConfig, "train", ov)
    device = resolve_device(cfg.device, 0)
    if a.data:
        from worldmodel.data.clips import ClipDataset, ClipLoader, ClipSampler, ClipSpec
        from worldmodel.data.dataset import load_dataset

        ds = load_dataset(a.data, columns=("pixels", "action"))
        cfg.model = dataclasses.replace(cfg.model, action_dim=int(ds.action.shape[1]))
        clips = ClipDataset(ds, ClipSpec(cfg.model.history, cfg.data.n_preds, cfg.model.frameskip))
        loader = ClipLoader(clips, ClipSampler(len(clips), cfg.batch_size, seed=0),  # as `wm train` feeds
                            prefetch=cfg.data.prefetch, pin_memory=device.type == "cuda")  # its step
        batch = lambda: next(loader)  # noqa: E731
    else:
        cfg.model = dataclasses.replace(cfg.model, action_dim=a.action_dim)
        t, s, rng = cfg.model.history + cfg.data.n_preds, cfg.model.image_size, np.random.default_rng(0)
        pixels = torch.from_numpy(rng.integers(0, 256, (cfg.batch_size, t, s, s, 3), dtype=np.uint8))
        actions = torch.from_numpy(rng.normal(size=(cfg.batch_size, t - 1, cfg.model.chunk_dim)).astype(np.float32))
        if device.type == "cuda":     # pinned, as `wm train`'s loader hands batches to the step: a
            pixels, actions = pixels.pin_memory(), actions.pin_memory()   # pageable copy blocks the host
        batch = lambda: (pixels, actions)  # noqa: E731

    torch.manual_seed(0)
    model = WorldModel(cfg.model).to(device).train()
    opt, sched = build_optimizer(model, cfg)
    loss_mod = clip_loss(model, cfg)
    if cfg.compile:
        loss_mod = compile_loss(loss_mod, cfg.compile_mode)
    return cfg, device, model, opt, sched, loss_mod, autocast_for(cfg, device), batch


def main() -> None:
    p = parser()
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps-per-window", type=int, default=5)
    p.add_argument("--roofline", action="store_true", help="also the step's FLOP and op floors")
    p.add_argument("--roofline-size", type=int, default=0,
                   help="side of the square matmul timed for the peak rate (0: 2048 CPU, 8192 CUDA)")
    p.add_argument("--datasheet", default=None, metavar="TFLOPS,TBS",
                   help="no timing: the step's heavy-call roofline at these published rates")
    a = p.parse_args()
    from worldmodel.training.step import clip_loss, train_step

    cfg, device, model, opt, sched, loss_mod, amp, batch = setup(a)
    eager = clip_loss(model, cfg)                  # the same math, uncompiled: what the floors watch
    step = 0

    def eager_step() -> None:
        train_step(eager, model, opt, sched, [batch()], cfg, step, amp)

    if a.datasheet:
        tflops, tbs = (float(x) for x in a.datasheet.split(","))
        r = datasheet(eager_step, tflops, tbs)
        print(json.dumps({"figure": "train_step_datasheet_roofline", "preset": a.preset, "batch": cfg.batch_size,
                          "image_size": cfg.model.image_size, "precision": cfg.precision, **r,
                          "samples_per_s_at_roofline": round(1e3 * cfg.batch_size / r["roofline_ms"], 1),
                          "overrides": a.override, **provenance(device)}))
        return
    t0 = time.perf_counter()
    for _ in range(a.warmup):
        out = train_step(loss_mod, model, opt, sched, [batch()], cfg, step, amp)
        step += 1
    sync(device)
    warm_s = time.perf_counter() - t0
    rates = []
    for _ in range(a.windows):
        t0 = time.perf_counter()
        for _ in range(a.steps_per_window):
            out = train_step(loss_mod, model, opt, sched, [batch()], cfg, step, amp)
            step += 1
        sync(device)
        rates.append(a.steps_per_window * cfg.batch_size / (time.perf_counter() - t0))
    loss = float(out[0])                                      # host sync after timing
    sps = statistics.median(rates)
    bf16 = isinstance(amp, torch.autocast)
    res = {
        "figure": "train_samples_per_s", "preset": a.preset, "value": round(sps, 1),
        "ms_per_step": round(1000 * cfg.batch_size / sps, 2), "batch": cfg.batch_size,
        "clip_frames": cfg.model.history + cfg.data.n_preds, "image_size": cfg.model.image_size,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "amp": "bf16" if bf16 else "fp32",
        "compile": a.compile, "compile_mode": cfg.compile_mode if a.compile else None,
        "threads": torch.get_num_threads(), "malloc_tuned": a.malloc_tuned, "warmup_s": round(warm_s, 2),
        "data": a.data or "random", "windows": [round(r, 1) for r in rates], "final_loss": round(loss, 5),
        "overrides": a.override, **provenance(device)}
    if a.roofline:
        r = roofline(eager_step, device, torch.bfloat16 if bf16 else torch.float32, a.roofline_size,
                     seconds=res["ms_per_step"] / 1e3)
        r["step_gflop"] = r.pop("gflop")
        r["samples_per_s_at_peak_floor"] = round(1e3 * cfg.batch_size / r["floor_ms_at_peak"], 1)
        r["samples_per_s_at_op_floor"] = round(1e3 * cfg.batch_size / r["op_floor_ms"], 1)
        if "op_floor_graphed_ms" in r:
            r["samples_per_s_at_graphed_op_floor"] = round(1e3 * cfg.batch_size / r["op_floor_graphed_ms"], 1)
        res.update(r)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
