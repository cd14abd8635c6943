"""Joining a rank group (NCCL on CUDA, gloo on CPU, the same code path for both) and its layout's subgroups."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from engine.parallel.parallel_layout import ParallelLayout

# A collective waiting on a dead peer fails after this instead of hanging the replica.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class RankGroupAddress:
    """Where rank 0 listens for the group's rendezvous (TCP store)."""

    master_addr: str
    master_port: int
    world_size: int


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def join_rank_group(address: RankGroupAddress, rank: int, device: str, *, with_deepspeed: bool = False,
                    timeout: timedelta = COLLECTIVE_TIMEOUT) -> None:
    """Initialise torch.distributed's default group for this process.

    DeepSpeed's Ulysses layer asserts that DeepSpeed's own comm is initialised, so the
    sequence-parallel mode joins through ``deepspeed.init_distributed`` (which wraps the
    same torch.distributed group).
    """
    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a rank group")
    # The env:// rendezvous DeepSpeed uses; set for plain torch too so both paths agree.
    os.environ.update({"MASTER_ADDR": address.master_addr, "MASTER_PORT": str(address.master_port),
                       "RANK": str(rank), "WORLD_SIZE": str(address.world_size), "LOCAL_RANK": str(rank)})
    backend = backend_for(device)
    if with_deepspeed:
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout,
                                   rank=rank, world_size=address.world_size)
    else:
        dist.init_process_group(backend=backend, rank=rank, world_size=address.world_size, timeout=timeout)


@dataclass(frozen=True)
class LayoutGroups:
    """This rank's subgroups of a parallel layout (engine/parallel/parallel_layout.py).

    ``inner`` splits the DiT (Ulysses or tensor) inside this rank's cfg index; ``cfg``
    gathers a step's rows across the cfg indices. Either is the default group when it
    spans every rank, and None when its side of the layout is one rank.
    """

    cfg: dist.ProcessGroup | None
    cfg_index: int
    inner: dist.ProcessGroup | None


def join_layout_groups(layout: ParallelLayout) -> LayoutGroups:
    """Create the layout's subgroups of the joined default group and return this rank's.

    ``dist.new_group`` is collective over the whole default group: every rank creates
    every subgroup, in the same order, even those it is not in.
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != layout.degree:
        raise ValueError(f"parallel: {layout.mode} over {layout.degree} ranks, but the rank group has {world_size}")
    inner = dist.group.WORLD if layout.inner > 1 else None
    cfg = dist.group.WORLD if layout.cfg > 1 else None
    if layout.cfg > 1 and layout.inner > 1:
        for ranks in layout.inner_groups():
            group = dist.new_group(ranks)
            if rank in ranks:
                inner = group
        for ranks in layout.cfg_groups():
            group = dist.new_group(ranks)
            if rank in ranks:
                cfg = group
    return LayoutGroups(cfg=cfg, cfg_index=layout.cfg_index(rank), inner=inner)
