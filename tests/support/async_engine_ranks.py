"""One rank of the gang test of the async engine (tests/multiprocess/test_parallel_engine.py), in its own process.

Rank 0 runs the AsyncDenoiseEngine on a RankGroupExecutor and starts requests from its
event loop while the step thread runs steps: each request is added when the one before
it reports a step, so every add lands while a step is in flight. Rank 1 mirrors the
steps. Rank 0 records every step message it sends and writes, for the test, which batch
members had not been sent to the peers first, and each request's latents against the
same request run alone.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from pathlib import Path

import torch

from engine.batching.async_denoise_engine import AsyncDenoiseEngine, DenoiseDone
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.models.model_registry import resolve_model
from engine.parallel.collective_peers import CollectivePeers, run_rank_mirror
from engine.parallel.communication_log import CommunicationLog
from engine.parallel.parallel_dit import parallelize_denoiser
from engine.parallel.process_group import RankGroupAddress, join_rank_group
from engine.parallel.rank_group_executor import RankGroupExecutor, RankMirror, StepMessage
from engine.request_validation import validate_generation
from engine.staged_pipeline import StagedPipeline
from engine.stages.loading import load_denoiser

REQUESTS = 12


class ThreadRecordingExecutor(RankGroupExecutor):
    """The real gang executor, noting which thread touches its per-step state."""

    threads: set[int]

    def start(self, task):
        self.threads.add(threading.get_ident())
        return super().start(task)

    def release(self, request_id):
        self.threads.add(threading.get_ident())
        super().release(request_id)

    def execute(self, states):
        self.threads.add(threading.get_ident())
        super().execute(states)


class RecordingPeers(CollectivePeers):
    """The real broadcast transport, keeping each message rank 0 sent."""

    def __init__(self):
        self.messages: list[StepMessage] = []

    def submit(self, message: StepMessage) -> None:
        self.messages.append(message)
        super().submit(message)


async def _run(engine: AsyncDenoiseEngine, tasks) -> dict[str, torch.Tensor]:
    results: dict[str, torch.Tensor] = {}

    async def run(index: int) -> None:
        started_next = False
        async for event in engine.denoise(tasks[index]):
            if isinstance(event, DenoiseDone):
                results[tasks[index].request_id] = event.latents.latents
            elif not started_next and index + 1 < len(tasks):
                started_next = True  # this request's step ran: the next one arrives mid-flight
                follower.append(asyncio.create_task(run(index + 1)))

    follower: list[asyncio.Task] = []
    await run(0)
    while follower:
        await follower.pop(0)
    return results


def main(rank: int, world_size: int, port: int, cache_dir: str, output: str) -> None:
    torch.set_num_threads(1)
    join_rank_group(RankGroupAddress("127.0.0.1", port, world_size), rank, "cpu", with_deepspeed=True)
    spec = resolve_model("tiny", Path(cache_dir))
    denoiser = load_denoiser(spec)
    log = CommunicationLog()
    parallelize_denoiser(denoiser, "sequence", log)
    if rank != 0:
        run_rank_mirror(RankMirror(denoiser))
        return
    pipeline = StagedPipeline.load(spec)
    tasks = [
        pipeline.denoise_task(validate_generation(
            {"prompt": f"prompt {index % 3}", "width": 32, "height": 32, "num_frames": 5,
             "num_inference_steps": 2 + index % 3, "guidance_scale": 0.0 if index % 2 else 4.0, "seed": index},
            spec, request_id=f"r{index}"))
        for index in range(REQUESTS)
    ]
    alone = {task.request_id: pipeline.denoiser.denoise(task).latents for task in tasks}
    peers = RecordingPeers()
    executor = ThreadRecordingExecutor(denoiser, peers, log)
    executor.threads = set()
    engine = AsyncDenoiseEngine(executor, SchedulerConfig(max_batch_size=4),
                                thread_initializer=lambda: torch.set_num_threads(1))
    results = asyncio.run(_run(engine, tasks))
    engine.shutdown()
    peers.close()
    sent: set[str] = set()
    unsent_batch_members = []
    for message in peers.messages:
        sent.update(task.request_id for task in message.started)
        unsent_batch_members += [request_id for request_id in message.batch if request_id not in sent]
    report = {
        "finished": sorted(results),
        "sent_to_peers": sorted(sent),
        "unsent_batch_members": unsent_batch_members,
        "batch_sizes": [len(message.batch) for message in peers.messages],
        "latent_max_abs_diff": max((results[rid] - alone[rid]).abs().max().item() for rid in results),
        # The executor's per-step state (what to send the peers next) had one writer.
        "executor_threads": len(executor.threads),
        "executor_on_event_loop_thread": threading.get_ident() in executor.threads,
    }
    Path(output).write_text(json.dumps(report))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
