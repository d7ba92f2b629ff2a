"""Where a training step's time goes: wall time per step, kernel launches and dtype casts per step,
and the torch.profiler table of the heaviest ops (host time first: on a GPU the eager step can be
bound by launching its many small kernels rather than by the kernels themselves).

    python -m benchmarks.train_profile --preset lewm --batch 128 --device cuda model.patch_size=8 model.image_size=64
    ... --compile [--compile-mode reduce-overhead]

Same model, optimiser, random clips and `train_step` as train_speed.py (its arguments). Measures
the mean of --steps steps after --warmup steps (one sync at each end), then profiles --profile-steps
more. stdout: one JSON line; the profiler table goes to stderr. train_speed.py gives the medians
that the results quote as throughput; this script explains them.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from benchmarks.roofline import sync  # noqa: E402
from benchmarks.train_speed import parser, setup  # noqa: E402

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def main() -> None:
    p = parser()
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--profile-steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=25, help="profiler table rows (stderr)")
    a = p.parse_args()
    from torch.profiler import ProfilerActivity, profile

    from worldmodel.training.step import train_step

    cfg, device, model, opt, sched, loss_mod, amp, batch = setup(a)
    step = 0

    def run(n: int) -> None:
        nonlocal step
        for _ in range(n):
            train_step(loss_mod, model, opt, sched, [batch()], cfg, step, amp)
            step += 1

    t0 = time.perf_counter()
    run(a.warmup)
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(a.steps)
    sync(device)
    ms = 1000 * (time.perf_counter() - t0) / a.steps
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run(a.profile_steps)
        sync(device)
    avg = prof.key_averages()
    count = {e.key: e.count for e in avg}
    per_step = lambda *keys: round(sum(count.get(k, 0) for k in keys) / a.profile_steps, 1)  # noqa: E731
    print(avg.table(sort_by="cpu_time_total", row_limit=a.rows, max_name_column_width=70),
          file=sys.stderr)
    print(json.dumps({
        "figure": "train_step_profile", "preset": a.preset, "ms_per_step": round(ms, 2),
        "samples_per_s": round(1000 * cfg.batch_size / ms, 1), "steps": a.steps, "batch": cfg.batch_size,
        "image_size": cfg.model.image_size, "patch_size": cfg.model.patch_size,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "compile": a.compile, "compile_mode": cfg.compile_mode if a.compile else None,
        "warmup_s": round(warm_s, 2), "kernel_launches_per_step": per_step(*LAUNCHES),
        "dtype_casts_per_step": per_step("aten::_to_copy"), "overrides": a.override}))


if __name__ == "__main__":
    main()
