"""Starting gangs of real rank processes for the parallel DiT tests.

Ranks start from one forkserver per test session that has imported diffusers, DeepSpeed
and the rank modules once, so a gang starts in about a second instead of several per rank.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

from tests.serving_cluster import free_port

FORKSERVER_PRELOAD = [
    "diffusers",
    "diffusers.models.transformers.transformer_wan",
    "diffusers.schedulers.scheduling_unipc_multistep",
    "deepspeed",
    "deepspeed.sequence.layer",
    "engine.stages.denoiser",
    "engine.parallel.tensor_parallel",
    "engine.parallel.sequence_parallel",
    "tests.tensor_parallel_ranks",
    "tests.sequence_parallel_ranks",
]


def spawn_ranks(rank_main: Callable[..., None], world_size: int, *args) -> None:
    """Run ``rank_main(rank, world_size, port, *args)`` in ``world_size`` processes; raise if any fails."""
    import torch.multiprocessing as mp

    # Takes effect when the first gang starts the forkserver; later gangs reuse it.
    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    mp.start_processes(rank_main, args=(world_size, free_port(), *args), nprocs=world_size, start_method="forkserver")


def result_path(out_dir: Path, case_name: str, rank: int) -> Path:
    return out_dir / f"{case_name}.rank{rank}.pt"
