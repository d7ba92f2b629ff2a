"""Process-group plumbing for `wm train` (single process, torchrun DDP, or a test's own group).

`torchrun --nproc_per_node=N -m worldmodel.cli train ...` sets RANK/WORLD_SIZE/LOCAL_RANK; we then
initialise the default group from those variables (NCCL on CUDA, gloo on CPU). A caller that has
already initialised a group (a test spawning gloo ranks) keeps ownership of it.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def init_distributed() -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, we_initialised) from an existing group or torchrun env vars."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)                               # env:// from torchrun
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True
    return 0, 1, 0, False


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's global torch RNG states (dropout draws from them): exact resume restores them."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_rng_states(device: torch.device, world: int) -> list[dict[str, Any]]:
    """Every rank's `rng_state`, indexed by rank (a collective: all ranks must call it)."""
    mine = rng_state(device)
    if world == 1:
        return [mine]
    allstates: list[Any] = [None] * world
    dist.all_gather_object(allstates, mine)
    return allstates


def ranks_in_sync(model: nn.Module, world: int) -> bool:
    """Whether every rank ends with bit-identical weights (DDP's invariant; checked once at the end)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    mine = torch.stack([flat.sum(), (flat * torch.arange(len(flat), device=flat.device)).sum()])
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    return all(torch.equal(e, every[0]) for e in every)
