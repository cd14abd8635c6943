"""The other ranks of a multi-rank Denoiser replica: Ray actors in the replica's placement group.

Serve creates one placement group per replica from the Denoiser's
``placement_group_bundles``; the replica (rank 0) runs in bundle 0 and starts rank i in
bundle i. The actors are owned by the replica, so when Serve replaces the replica (its
health check fails after a rank died) its placement group and every rank go with it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import ray
from ray.util.placement_group import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from engine.parallel.communication_log import CommunicationLog
from engine.families.family import Denoising
from engine.parallel.parallel_dit import needs_deepspeed, parallelize_denoiser
from engine.parallel.process_group import RankGroupAddress, join_rank_group
from engine.batching.denoise_engine import StepEvent
from engine.parallel.rank_group_executor import RankFailed, RankGroupExecutor, RankMirror, StepMessage
from engine.stages.loading import load_denoiser
from serve.app_config import AppConfig

logger = logging.getLogger("ray.serve")


def load_parallel_denoiser(config: AppConfig, model: str, rank: int,
                           address: RankGroupAddress) -> tuple[Denoising, CommunicationLog]:
    """Join the group, load the DiT (every expert), split it: what every rank, 0 included, does at start-up.

    The split follows the config's whole layout (e.g. cfg 2 x sequence 2: the Ulysses
    subgroups and the cfg groups are created here, in the same order on every rank).
    """
    from serve.deployments.model_stage import load_stage_context

    app_config, spec, placement = load_stage_context(config, "transformer", model)
    layout = app_config.parallel.rank_layout
    join_rank_group(address, rank, placement.device, with_deepspeed=needs_deepspeed(layout))
    denoiser = load_denoiser(spec, placement)
    communication = CommunicationLog()
    parallelize_denoiser(denoiser, layout, communication)
    return denoiser, communication


@ray.remote(max_concurrency=2)  # ping() answers while apply() runs a step
class DenoiserRank:
    def __init__(self, config: AppConfig, model: str, rank: int, address: RankGroupAddress, torch_threads: int):
        import torch

        self.torch_threads = torch_threads
        torch.set_num_threads(torch_threads)
        denoiser, _ = load_parallel_denoiser(config, model, rank, address)
        self.mirror = RankMirror(denoiser)

    def ping(self) -> bool:
        return True

    def apply(self, message: StepMessage) -> None:
        import torch

        torch.set_num_threads(self.torch_threads)  # a threaded actor may run this on a new thread
        self.mirror.apply(message)


class RayPeerRanks:
    """Rank 0's channel to ranks 1..N-1: one actor call per step, the message put once."""

    def __init__(self, ranks: list[Any]):
        self.ranks = ranks

    def submit(self, message: StepMessage) -> list[ray.ObjectRef]:
        shared = ray.put(message)  # serialized once, whatever N is
        return [rank.apply.remote(shared) for rank in self.ranks]

    def wait(self, handle: list[ray.ObjectRef]) -> None:
        try:
            ray.get(handle)
        except ray.exceptions.RayError as error:
            raise RankFailed(str(error)) from error

    def ping_refs(self) -> list[ray.ObjectRef]:
        return [rank.ping.remote() for rank in self.ranks]


def start_rank_group(app_config: AppConfig, model: str, degree: int) -> tuple[RankGroupExecutor, RayPeerRanks]:
    """Rank 0's side of a gang: start ranks 1..N-1, join them here, and drive them with an executor."""
    placement_group = get_current_placement_group()
    cpus_per_rank = placement_group.bundle_specs[0].get("CPU", 1) if placement_group else 1
    torch_threads = app_config.torch_threads or max(1, int(cpus_per_rank))
    address, ranks = start_peer_ranks(app_config, model, degree, torch_threads)
    # Rank 0 joins here while the actors start: the rendezvous waits for all of them.
    denoiser, communication = load_parallel_denoiser(app_config, model, 0, address)
    peers = RayPeerRanks(ranks)
    return RankGroupExecutor(denoiser, peers, communication), peers


async def check_rank_group(executor: RankGroupExecutor, peers: RayPeerRanks) -> None:
    """Raise once any rank has died, failed a step or stopped answering."""
    if executor.broken:
        raise RuntimeError(f"Denoiser rank group failed: {executor.failure!r}")
    try:
        await asyncio.wait_for(asyncio.gather(*peers.ping_refs()), timeout=30)
    except Exception as error:
        executor.failure = error
        raise RuntimeError(f"a Denoiser rank is unreachable: {error!r}") from error


def log_step_communication(events) -> None:
    """What the gang's collectives moved in a step, for operators tuning the parallel mode."""
    step = next((event for event in events if isinstance(event, StepEvent)), None)
    if step is not None:
        logger.info("denoise step: batch %d, %.3fs, communication %s", step.batch_size, step.step_seconds,
                    step.communication.bytes_by_kind)


def rank_actor_name(app_name: str, replica_id: str, rank: int) -> str:
    """Names say whose rank an actor is (operators and the fault test find them by it)."""
    return f"videoserve-denoiser-rank{rank}:{app_name}:{replica_id}"


def start_peer_ranks(config: AppConfig, model: str, degree: int, torch_threads: int) -> tuple[RankGroupAddress, list[Any]]:
    """Start ranks 1..degree-1, one per bundle of this replica's placement group."""
    from ray import serve

    placement_group = get_current_placement_group()
    if placement_group is None:
        raise RuntimeError(f"parallel degree {degree} needs the Denoiser's placement_group_bundles "
                           "(derived from the config's parallel field by the builder)")
    bundles = placement_group.bundle_specs
    if len(bundles) != degree:
        raise RuntimeError(f"the replica's placement group has {len(bundles)} bundles for {degree} ranks")
    address = RankGroupAddress(ray.util.get_node_ip_address(), _free_port(), degree)
    replica = serve.get_replica_context()
    ranks = []
    for index in range(1, degree):
        bundle = dict(bundles[index])
        ranks.append(
            DenoiserRank.options(
                name=rank_actor_name(replica.replica_id.deployment_id.app_name, replica.replica_id.unique_id, index),
                num_cpus=bundle.pop("CPU", 0),
                num_gpus=bundle.pop("GPU", 0),
                memory=bundle.pop("memory", None),
                resources=bundle,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=index),
            ).remote(config, model, index, address, torch_threads)
        )
    logger.info("Denoiser rank group of %d at %s:%d", degree, address.master_addr, address.master_port)
    return address, ranks


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]
