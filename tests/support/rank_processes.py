"""Starting gangs of real rank processes for the parallel DiT tests.

Ranks start from one forkserver per test session that has imported diffusers, DeepSpeed
and the rank modules once, so a gang starts in about a second instead of several per rank.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path

from tests.support.serving_cluster import free_port

FORKSERVER_PRELOAD = [
    "diffusers",
    "diffusers.models.transformers.transformer_wan",
    "diffusers.schedulers.scheduling_unipc_multistep",
    "deepspeed",
    "deepspeed.sequence.layer",
    "engine.stages.denoiser",
    "engine.parallel.tensor_parallel",
    "engine.parallel.sequence_parallel",
    "tests.support.tensor_parallel_ranks",
    "tests.support.sequence_parallel_ranks",
]


def run_cases_on_ranks(run_case: Callable[[int, object], object], world_size: int, cases: list, out_dir: Path,
                       *, with_deepspeed: bool = False) -> None:
    """On a fresh gloo gang of ``world_size`` processes, save ``run_case(rank, case)`` for every case.

    Results land at ``result_path(out_dir, case.name, rank)``; raises if any rank fails.
    """
    import torch.multiprocessing as mp

    # Takes effect when the first gang starts the forkserver; later gangs reuse it.
    multiprocessing.set_forkserver_preload(FORKSERVER_PRELOAD)
    mp.start_processes(_rank_main, args=(world_size, free_port(), run_case, cases, out_dir, with_deepspeed),
                       nprocs=world_size, start_method="forkserver")


def _rank_main(rank: int, world_size: int, port: int, run_case, cases: list, out_dir: Path,
               with_deepspeed: bool) -> None:
    import torch
    import torch.distributed as dist

    from engine.parallel.process_group import RankGroupAddress, join_rank_group

    torch.set_num_threads(1)  # the ranks share the machine's cores
    join_rank_group(RankGroupAddress("127.0.0.1", port, world_size), rank, "cpu", with_deepspeed=with_deepspeed)
    try:
        for case in cases:
            torch.save(run_case(rank, case), result_path(out_dir, case.name, rank))
    finally:
        dist.destroy_process_group()


def result_path(out_dir: Path, case_name: str, rank: int) -> Path:
    return out_dir / f"{case_name}.rank{rank}.pt"
