"""Rooflines: how fast a workload could run on this device, from its own FLOPs and its own heavy ops.

A workload (one training step, one planning solve) runs once eagerly under a dispatch mode that
records its heavy calls (those with a FLOP formula); `roofline` turns them into lower bounds on
its time from rates measured on the device at hand, `datasheet` from a device's published rates.

    from benchmarks.roofline import roofline
    out = roofline(lambda: train_step(...), device, torch.bfloat16)   # dict of the figures
"""
from __future__ import annotations

import collections
import statistics
import time
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import (flop_registry, register_flop_formula, sdpa_backward_flop_count,
                                      sdpa_flop_count)

aten = torch.ops.aten

# CPU flash attention has no formula in torch's counter: the same count as the CUDA kernels.
if aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:
    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_rate(device: torch.device, op: Callable[[], Any], work: float, runs: int = 10) -> float:
    """Median of work / seconds over `runs` timed calls of op(), after two warm-up calls."""
    rates = []
    for i in range(runs + 2):
        sync(device)
        t = time.perf_counter()
        op()
        sync(device)
        if i >= 2:
            rates.append(work / (time.perf_counter() - t))
    return statistics.median(rates)


def peak_matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, runs: int = 10) -> float:
    """Median rate of an n x n x n matmul in `dtype` on this device (GFLOP/s)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return median_rate(device, lambda: a @ b, 2 * n ** 3 / 1e9, runs)


def copy_bandwidth_gbs(device: torch.device, mb: int = 0, runs: int = 10) -> float:
    """Median rate of one large tensor copy, bytes read + written (GB/s): 64 MB on the CPU, 1 GB on CUDA."""
    n = (mb or (1024 if device.type == "cuda" else 64)) * 2 ** 20 // 4
    a, b = torch.randn(n, device=device), torch.empty(n, device=device)
    return median_rate(device, lambda: b.copy_(a), 2 * 4 * n / 1e9, runs)


class TensorSpec(tuple):
    """(shape, stride, storage_offset, dtype, device) of a recorded argument: enough to rebuild one."""

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorSpec":
        return cls((tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, str(t.device)))

    def extent(self) -> int:
        """Elements of storage the tensor spans from its offset (an expanded input is read once)."""
        shape, stride = self[0], self[1]
        return 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0

    def make(self) -> torch.Tensor:
        shape, stride, offset, dtype, device = self
        base = torch.empty(max(offset + self.extent(), 1), dtype=dtype, device=device)
        if dtype.is_floating_point:
            base.normal_()
        else:
            base.zero_()                                # masks, philox seeds / offsets
        return base.as_strided(shape, stride, offset)


# Ops that launch no kernel besides views: allocations, and _unsafe_view (a view by another name).
_NO_KERNEL = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
              torch.ops.aten.empty_like.default, torch.ops.aten.new_empty.default,
              torch.ops.aten.new_empty_strided.default, torch.ops.aten._unsafe_view.default}


class HeavyOps(TorchDispatchMode):
    """Records every heavy call (an op with a FLOP formula) as (op, flattened argument specs) ->
    number of calls, with each distinct call's argument tree and its cost per call (FLOPs, bytes
    read + written); and counts every op that computes (not a view, not an allocation): in eager
    mode each is a kernel launch, so the count says how many kernels a CUDA graph replays."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()
        self.specs: dict[Any, Any] = {}
        self.cost: dict[Any, tuple[float, int]] = {}
        self.compute_ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view and func not in _NO_KERNEL:
            self.compute_ops[str(func.overloadpacket)] += 1
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            leaves, tree = pytree.tree_flatten((args, kwargs))
            frozen = tuple(TensorSpec.of(x) if isinstance(x, torch.Tensor) else x for x in leaves)
            key = (func, frozen, repr(tree))
            if key not in self.specs:
                flops = formula(*args, **kwargs, out_val=out)
                read = sum(x.extent() * x[3].itemsize for x in frozen if isinstance(x, TensorSpec))
                written = sum(t.numel() * t.element_size() for t in pytree.tree_leaves(out)
                              if isinstance(t, torch.Tensor))
                self.specs[key], self.cost[key] = tree, (float(flops), read + written)
            self.calls[key] += 1
        return out

    def flops(self) -> tuple[float, dict[str, float]]:
        """(total FLOPs, FLOPs per aten op) of the recorded calls."""
        per_op: dict[str, float] = collections.defaultdict(float)
        for key, calls in self.calls.items():
            per_op[str(key[0].overloadpacket)] += calls * self.cost[key][0]
        return sum(per_op.values()), dict(per_op)


def count_flops(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """Run fn once; (total FLOPs, FLOPs per aten op)."""
    rec = HeavyOps()
    with rec:
        fn()
    return rec.flops()


def time_call_graphed(func, args, kwargs, device: torch.device, n: int = 50, repeats: int = 5) -> float:
    """Seconds per call of func(*args, **kwargs) on CUDA, n calls captured in one CUDA graph and the
    graph replayed (median of `repeats`, CUDA events): the kernel's own time, without the Python and
    launch overhead each eager call costs. A planning solve replayed in one graph sees that."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):                        # warm up on a side stream, as capture needs
        for _ in range(3):
            func(*args, **kwargs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            func(*args, **kwargs)
    graph.replay()
    per = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()                                # host sync: end of one timed replay
        per.append(start.elapsed_time(end) / 1e3 / n)
    return statistics.median(per)


def time_call(func, args, kwargs, device: torch.device, min_s: float = 0.02, repeats: int = 3) -> float:
    """Seconds per call of func(*args, **kwargs) run back to back (median of `repeats` timed loops)."""
    for _ in range(2):
        func(*args, **kwargs)
    sync(device)
    t = time.perf_counter()
    func(*args, **kwargs)
    sync(device)
    n = int(min(200, max(3, min_s / max(time.perf_counter() - t, 1e-7))))
    per = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            func(*args, **kwargs)
        sync(device)                                    # host sync: end of the timed loop
        per.append((time.perf_counter() - t) / n)
    return statistics.median(per)


def at_rates(rec: HeavyOps, peak_gflops: float, bandwidth_gbs: float) -> dict[str, Any]:
    """The textbook roofline of the recorded calls: each at its FLOPs / peak_gflops or its bytes /
    bandwidth_gbs, whichever is slower, summed; and the bytes alone."""
    roof_s = gflop = gb = 0.0
    memory_bound = 0
    for key, calls in rec.calls.items():
        flops, nbytes = rec.cost[key]
        compute_s, memory_s = flops / 1e9 / peak_gflops, nbytes / 1e9 / bandwidth_gbs
        roof_s += calls * max(compute_s, memory_s)
        memory_bound += calls * (memory_s > compute_s)
        gflop, gb = gflop + calls * flops / 1e9, gb + calls * nbytes / 1e9
    return {"roofline_ms": round(1e3 * roof_s, 2), "memory_floor_ms": round(1e3 * gb / bandwidth_gbs, 2),
            "heavy_gflop": round(gflop, 3), "heavy_gb": round(gb, 3), "heavy_calls": sum(rec.calls.values()),
            "memory_bound_calls": memory_bound, "distinct_heavy_calls": len(rec.calls)}


def op_floor(rec: HeavyOps, device: torch.device, top: int = 8) -> dict[str, Any]:
    """Replay each distinct recorded call alone: total milliseconds, the `top` heaviest calls, and
    the calls that could not be replayed (left out of the total: the floor is then partial). On
    CUDA each call is also replayed inside a CUDA graph ("op_floor_graphed_ms": kernel time alone,
    what a graphed program's calls cannot beat); "op_floor_ms" is then the eager replay's, launches
    included."""
    rows, failed = [], []
    graphed = device.type == "cuda"
    for key, calls in rec.calls.items():
        func, frozen, _ = key
        leaves = [x.make() if isinstance(x, TensorSpec) else x for x in frozen]
        args, kwargs = pytree.tree_unflatten(leaves, rec.specs[key])
        try:
            with torch.no_grad():
                s = g = time_call(func, args, kwargs, device)
        except RuntimeError as e:        # a kernel that refuses random inputs: named, not summed
            failed.append(f"{func}: {str(e).splitlines()[0][:200]}")
            continue
        if graphed:
            try:
                with torch.no_grad():
                    g = time_call_graphed(func, args, kwargs, device)
            except RuntimeError as e:    # not capturable: its eager time stands in, and is named
                failed.append(f"{func} (in a CUDA graph; eager time used): {str(e).splitlines()[0][:200]}")
        shapes = ", ".join("x".join(map(str, x[0])) for x in frozen if isinstance(x, TensorSpec))
        dtypes = sorted({str(x[3]).removeprefix("torch.") for x in frozen if isinstance(x, TensorSpec)})
        flops, nbytes = rec.cost[key]
        row = {"op": str(func), "shapes": shapes, "dtype": "/".join(dtypes), "calls": calls,
               "ms_per_call": round(1e3 * s, 4), "ms": 1e3 * s * calls,
               "gflop_per_call": round(flops / 1e9, 4), "mb_per_call": round(nbytes / 1e6, 2)}
        if graphed:
            row.update(graphed_ms_per_call=round(1e3 * g, 4), graphed_ms=1e3 * g * calls)
        rows.append(row)
    rank = "graphed_ms" if graphed else "ms"
    rows.sort(key=lambda r: -r[rank])
    out = {"op_floor_ms": round(sum(r["ms"] for r in rows), 2)}
    if graphed:
        out["op_floor_graphed_ms"] = round(sum(r["graphed_ms"] for r in rows), 2)
    for r in rows:
        r["ms"] = round(r["ms"], 3)
        if graphed:
            r["graphed_ms"] = round(r["graphed_ms"], 3)
    return {**out, "op_floor_top": rows[:top], "replay_failed": failed}


def datasheet(fn: Callable[[], Any], peak_tflops: float, bandwidth_tbs: float) -> dict[str, Any]:
    """The roofline of fn's heavy calls at a device's published rates, from any machine: fn runs under
    FakeTensorMode (shapes and dtypes propagate, nothing is computed), so a full-size GPU step can be
    recorded on a laptop CPU. An estimate, not a measurement: name the rates' source with it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    rec = HeavyOps()
    with FakeTensorMode(allow_non_fake_inputs=True), rec:
        fn()
    return {"datasheet_peak_tflops": peak_tflops, "datasheet_bandwidth_tbs": bandwidth_tbs,
            **at_rates(rec, 1e3 * peak_tflops, 1e3 * bandwidth_tbs)}


def roofline(fn: Callable[[], Any], device: torch.device, dtype: torch.dtype, peak_size: int = 0,
             seconds: float | None = None) -> dict[str, Any]:
    """The floors for fn (run once, eagerly, recorded). With `seconds`, the measured time of one fn,
    also the FLOP rate it reached.

    - "floor_ms_at_peak": its FLOPs over this device's rate on one large square matmul in `dtype`
      (loose: small or skinny matmuls run well below that rate);
    - "op_floor_ms": every heavy call replayed alone with its exact layout and summed, all else
      counted as free (on CUDA also "op_floor_graphed_ms", each call's repeats in one CUDA graph):
      a program that keeps these ops cannot be faster, short of fusing them;
    - "roofline_ms": each call at its FLOPs at the matmul rate or its bytes at the copy bandwidth,
      whichever is slower, summed; "memory_floor_ms" the bytes alone."""
    rec = HeavyOps()
    with rec:
        fn()
    sync(device)
    flops, per_op = rec.flops()
    n = peak_size or (8192 if device.type == "cuda" else 2048)
    peak, bw = peak_matmul_gflops(device, dtype, n=n), copy_bandwidth_gbs(device)
    gflop = flops / 1e9
    out: dict[str, Any] = {"gflop": round(gflop, 3),
                           "gflop_by_op": {k: round(v / 1e9, 3) for k, v in per_op.items()},
                           "peak_matmul_gflops": round(peak, 1), "peak_matmul_size": n,
                           "copy_bandwidth_gbs": round(bw, 1), "floor_ms_at_peak": round(1e3 * gflop / peak, 2)}
    if seconds:
        out["achieved_gflops"] = round(gflop / seconds, 1)
    out["compute_ops"] = sum(rec.compute_ops.values())
    out["compute_ops_by_op"] = dict(rec.compute_ops.most_common(12))
    out.update(at_rates(rec, peak, bw))
    out.update(op_floor(rec, device))
    return out
