"""Latency of one full planning solve at LeWM scale, through the real predictor and GoalEnergy.

The model has LeWM's predictor (random weights, eval mode); the solve defaults to CEM 300 samples x
30 iterations x horizon 5. The history is encoded outside the timed region, which is exactly
`planner.solve`. Prints one JSON line per (planner, dtype): "median_ms", "p95_ms", "first_solve_s"
(the untimed first solve, compilation or capture included), ...

  python -m benchmarks.plan_latency                       # CPU, float32
  python -m benchmarks.plan_latency --device cuda --dtype float32,bfloat16_weights --cuda-graph
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time

import torch

from worldmodel.planners import Bounds, make_planner
from worldmodel.planners.graph import GraphedPlanner
from worldmodel.machine import keep_freed_host_memory
from worldmodel.model.energy import GoalEnergy
from worldmodel.model.world_model import ModelConfig, WorldModel

from benchmarks import recipes as R  # noqa: E402
from benchmarks.roofline import HeavyOps, roofline, sync  # noqa: E402


def build_energy(args, device: torch.device, dtype: torch.dtype | None = None, compile: bool = False
                 ) -> tuple[GoalEnergy, ModelConfig]:
    """A LeWM-sized world model with random weights, the goal and a full history encoded."""
    torch.manual_seed(0)
    cfg = ModelConfig(image_size=args.image_size, action_dim=args.action_dim,
                      frameskip=args.frameskip, history=args.history)
    model = WorldModel(cfg)
    torch.nn.init.normal_(model.predictor.adaln.weight, std=0.02)  # AdaLN-zero would make every
    model = model.to(device).eval()                                # candidate cost the same
    g = torch.Generator().manual_seed(0)
    img = lambda *lead: torch.randint(0, 256, (*lead, cfg.image_size, cfg.image_size, 3),  # noqa
                                      generator=g, dtype=torch.uint8)
    past = torch.rand(1, cfg.history - 1, cfg.chunk_dim, generator=g) * 2 - 1
    energy = GoalEnergy(model, goal_pixels=img(args.batch).to(device), dtype=dtype, compile=compile)
    energy.set_observation(img(args.batch, cfg.history).to(device),
                           past.expand(args.batch, -1, -1).to(device))
    return energy, cfg


def timed_energy(energy, device: torch.device, log: list[float]):
    """Wrap the energy to accumulate its wall time (synchronising on CUDA: profiling only)."""
    def call(actions: torch.Tensor) -> torch.Tensor:
        sync(device)
        t = time.perf_counter()
        out = energy(actions)
        sync(device)
        log.append(time.perf_counter() - t)
        return out
    return call


def measure(args, planner_name: str, dtype_name: str, device: torch.device) -> dict:
    dtype = torch.bfloat16 if dtype_name == "bfloat16_weights" else None
    energy, cfg = build_energy(args, device, dtype)             # eager: profiled, counted, roofline
    kw = dict(samples=args.samples, iterations=args.iterations, seed=0)
    if planner_name in ("cem", "icem", "mppi") and args.elites:
        kw["elites"] = args.elites
    planner = make_planner(planner_name, **kw)
    bounds = Bounds.make([-1.0] * cfg.chunk_dim, [1.0] * cfg.chunk_dim, device=device)
    autocast = dtype_name == "bfloat16"
    if dtype_name == "int8":
        energy.model.predictor = torch.ao.quantization.quantize_dynamic(
            energy.model.predictor, {torch.nn.Linear}, dtype=torch.qint8)

    fn = energy                                                 # timed: as `wm eval compile=...` runs
    if args.compile:
        fn, _ = build_energy(args, device, dtype, compile=True)  # the same seeds: the same model and inputs

    def bf16_ctx():
        # no autocast weight-cast cache: cached casts made during graph capture would be freed
        return (torch.autocast(device.type, torch.bfloat16, cache_enabled=not args.cuda_graph)
                if autocast else contextlib.nullcontext())

    def energy_fn(actions):
        with bf16_ctx():
            return fn(actions)

    def solve():
        return planner.solve(energy_fn, bounds, args.horizon, batch=args.batch)

    run = solve
    sync(device)
    t_first = time.perf_counter()
    if args.cuda_graph:
        graphed = GraphedPlanner(planner)                  # what MPCController(cuda_graph=True) runs

        def run():
            return graphed.solve(energy_fn, bounds, args.horizon, batch=args.batch)
        run()                                              # warm up and capture, untimed
    elif args.warmup:
        run()                                              # compiles (--compile), untimed
    sync(device)
    first_s = time.perf_counter() - t_first                # what a controller's warmup() pays once
    for _ in range(args.warmup - (0 if args.cuda_graph else 1)):
        run()
    times = []
    for _ in range(args.runs):
        sync(device)
        t = time.perf_counter()
        res = run()
        sync(device)
        times.append(time.perf_counter() - t)
    ms = sorted(1e3 * t for t in times)
    out = {"bench": "plan_latency", "device": torch.cuda.get_device_name(device)
           if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
           "dtype": dtype_name, "planner": planner_name, "samples": args.samples,
           "iterations": args.iterations, "horizon": args.horizon, "chunk": cfg.chunk_dim,
           "batch": args.batch, "cuda_graph": bool(args.cuda_graph), "compile": bool(args.compile),
           "median_ms": round(statistics.median(ms), 2),
           "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 2),
           "runs": len(ms), "malloc_tuned": args.malloc_tuned, "first_solve_s": round(first_s, 2),
           "final_cost": round(float(res.cost.float().mean()), 4),
           "date": datetime.date.today().isoformat(), "git": R.git_commit(), "machine": R.machine(str(device))}
    if args.profile and not args.cuda_graph:
        log: list[float] = []
        wrapped = timed_energy(energy_fn, device, log)
        t = time.perf_counter()
        planner.solve(wrapped, bounds, args.horizon, batch=args.batch)
        total = time.perf_counter() - t
        out.update(profile_total_ms=round(1e3 * total, 2),
                   profile_energy_ms=round(1e3 * sum(log), 2),
                   profile_planner_overhead_ms=round(1e3 * (total - sum(log)), 2),
                   profile_energy_calls=len(log))
    if args.count_ops and not args.roofline:        # (--roofline counts them too)
        rec = HeavyOps()
        with rec, bf16_ctx():
            planner.solve(energy, bounds, args.horizon, batch=args.batch)
        out.update(compute_ops=sum(rec.compute_ops.values()),
                   compute_ops_by_op=dict(rec.compute_ops.most_common(12)))
    if args.roofline and dtype_name != "int8":     # the counter does not see quantized kernels
        def eager_solve():                         # the same solve, uncompiled and ungraphed: watched
            with bf16_ctx():
                return planner.solve(energy, bounds, args.horizon, batch=args.batch)
        matmul_dtype = getattr(torch, dtype_name.removesuffix("_weights"))
        r = roofline(eager_solve, device, matmul_dtype, args.roofline_size, seconds=out["median_ms"] / 1e3)
        out.update(solve_gflop=r.pop("gflop"), **r)
    if dtype_name in ("int8", "bfloat16_weights"):   # what its plan costs under the float32 predictor
        check, _ = build_energy(args, device)           # (the same seeds: the same model and inputs)
        with torch.no_grad():
            out["final_cost_fp32"] = round(float(check(res.actions[:, None]).float().mean()), 4)
    return out


def check_args(args, device: torch.device) -> None:
    """Refuse an unknown dtype or a combination this script does not measure, before any solve."""
    for dtype_name in args.dtype.split(","):
        if dtype_name not in ("float32", "bfloat16", "bfloat16_weights", "int8"):
            raise SystemExit(f"unknown --dtype {dtype_name}: choose float32, bfloat16, bfloat16_weights "
                             "or int8")
        if dtype_name == "int8" and device.type != "cpu":
            raise SystemExit("int8 (dynamically quantized predictor linears) is the CPU path; on CUDA use "
                             "bfloat16")
        if dtype_name == "int8" and args.compile:
            raise SystemExit("--compile with int8 is not measured: drop one of them")
    if args.cuda_graph and device.type != "cuda":
        raise SystemExit("--cuda-graph needs --device cuda")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32",
                    help="comma list: float32, bfloat16 (autocast around each energy call), "
                         "bfloat16_weights (GoalEnergy(dtype=torch.bfloat16), what `wm eval precision=bf16` "
                         "plans with), int8 (CPU only: dynamically quantized predictor linears)")
    ap.add_argument("--planner", default="cem", help="comma list: cem,icem,mppi,gradient")
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--elites", type=int, default=30)
    ap.add_argument("--horizon", type=int, default=5)
    ap.add_argument("--frameskip", type=int, default=5)
    ap.add_argument("--action-dim", type=int, default=2)
    ap.add_argument("--history", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1, help="environments planned together")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--cuda-graph", action="store_true")
    ap.add_argument("--compile", action="store_true", help="GoalEnergy(compile=True), compiled in the warm-up")
    ap.add_argument("--profile", action="store_true", help="also split energy vs planner time")
    ap.add_argument("--roofline", action="store_true",
                    help="also the solve's FLOPs, its FLOP rate, this device's matmul rate "
                         "and the solve time at that rate")
    ap.add_argument("--count-ops", action="store_true",
                    help="also count the ops one eager solve computes (not views or allocations): "
                         "the kernels a CUDA graph of it replays")
    ap.add_argument("--roofline-size", type=int, default=0,
                    help="side of the square matmul timed (0: 2048 on the CPU, 8192 on CUDA)")
    args = ap.parse_args()
    args.malloc_tuned = keep_freed_host_memory()          # as `wm eval` does (WM_MALLOC_TUNING=0: off)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    check_args(args, device)
    for planner_name in args.planner.split(","):
        for dtype_name in args.dtype.split(","):
            print(json.dumps(measure(args, planner_name, dtype_name, device)), flush=True)


if __name__ == "__main__":
    main()
