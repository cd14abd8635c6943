"""Joining a rank group: NCCL on CUDA, gloo on CPU, the same code path for both."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

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
