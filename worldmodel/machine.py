"""The machine the toolkit runs on: which device to use, whether bf16 pays on it, its RAM, and
how the host allocator should treat a training loop's memory. Imports torch only when asked.
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes of RAM a new allocation can have now without swapping (Linux's MemAvailable), else the
    machine's RAM (physical_memory), or None where the OS says neither."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse, before it is allocated, `need` bytes of host memory for `what` where this machine has
    less available; the refusal (ValueError, one line) names `fix`."""
    have = available_memory()
    if have is not None and need > have:
        raise ValueError(f"{what} needs {need / 2 ** 30:.3g} GiB of memory and this machine has "
                         f"{have / 2 ** 30:.3g} GiB available: {fix}")


def check_device(name: str | torch.device) -> None:
    """Refuse a device torch does not know, or CUDA on a machine (or torch build) without it."""
    import torch

    if str(name) == "auto":
        return
    try:
        torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name}: use auto, cpu, cuda or cuda:N") from None
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"device={name} but CUDA is not available ({why}); use device=cpu or device=auto")


def resolve_device(name: str, local_rank: int) -> torch.device:
    """auto -> this rank's GPU if CUDA is available, else CPU; refuses cuda without CUDA."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    if name.startswith("cuda"):
        dev = torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
        torch.cuda.set_device(dev)
        return dev
    return torch.device(name)


def cpu_bf16_instructions(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str] | None:
    """The CPU's bf16 instructions listed in Linux's /proc/cpuinfo flags: x86's avx512_bf16 (bf16 dot
    products in AVX-512) and amx_bf16 (matrix tiles), Arm's bf16; None where the flags cannot be read.
    For the record only: having them is no promise of speed (avx512_bf16 without AMX may still run
    bf16 slower than float32), so decisions use bf16_matmul_speedup, which measures."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):     # x86 / Arm; every core lists the same
            words = set(line.split(":", 1)[1].split())
            return sorted(words & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


def bf16_matmul_speedup(device: str | torch.device = "cpu") -> float:
    """How many times faster this device multiplies bf16 matrices than float32 ones, timed on one
    predictor-sized product (512 x 192 @ 192 x 2048). Above 1 where bf16 runs in hardware (GPUs,
    CPUs with fast bf16 instructions), below 1 where it is emulated: whether `wm eval precision=bf16` / GoalEnergy(dtype=torch.bfloat16) pays here.
    Measured once per process and device ("cpu" and torch.device("cpu") are one device)."""
    import torch

    return _bf16_matmul_speedup(str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _bf16_matmul_speedup(device_name: str, reps: int = 8) -> float:
    import torch

    import time

    device = torch.device(device_name)
    g = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(512, 192, generator=g), torch.randn(192, 2048, generator=g)

    def median_s(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.to(device), b.to(device)
        times = []
        for i in range(reps + 2):                      # two untimed: first-call setup
            if device.type == "cuda":
                torch.cuda.synchronize(device)         # host sync: timing only, outside any hot loop
            t = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2]

    return median_s(a32, b32) / median_s(a32.bfloat16(), b32.bfloat16())


def precision_note(command: str, precision: str, speedup: float, gain: str) -> str | None:
    """The note `command` prints on a CPU where the other precision runs faster: bf16 matmuls measured
    `speedup` times as fast as float32 ones there (bf16_matmul_speedup); `gain` says what bf16 gave
    this command where it pays. None where the chosen precision is the faster or the gap is small."""
    if precision == "bf16" and speedup < 1:
        return (f"{command}: note: this CPU multiplies bf16 matrices at {speedup:.1f}x the speed of float32 "
                "ones (bf16 emulated): precision=fp32 runs faster here")
    if precision != "bf16" and speedup >= 2:
        return (f"{command}: note: this CPU multiplies bf16 matrices {speedup:.1f}x faster than float32 ones: "
                f"precision=bf16 runs faster here ({gain})")
    return None


def print_precision_note(command: str, precision: str, device: torch.device, gain: str) -> None:
    """On a CPU, print precision_note's line (stderr) where the other precision runs faster."""
    if device.type == "cpu" and (note := precision_note(command, precision, bf16_matmul_speedup(device), gain)):
        print(note, file=sys.stderr)


def keep_freed_host_memory() -> bool:
    """Let glibc keep freed heap memory instead of handing it back to the OS (M_TRIM_THRESHOLD 2 GB,
    M_TOP_PAD 1 GB): a CPU training step frees and re-allocates the same large activations every
    step, and memory returned to the OS comes back as page faults; keeping it speeds up training
    steps and CPU plans without raising peak memory. Process-wide and for later allocations only:
    `wm` calls it first. Linux glibc only; WM_MALLOC_TUNING=0 leaves the allocator alone. Returns whether it
    applied."""
    if os.environ.get("WM_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:                                    # musl and others: their own allocator policy
        return False
    m_trim_threshold, m_top_pad = -1, -2               # <malloc.h>
    return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_top_pad, 1 << 30))
