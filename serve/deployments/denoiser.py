"""The Denoiser deployment: a continuous-batching engine loop inside each replica.

Every in-flight ``denoise`` call is one request inside the engine; the loop runs one
batched step at a time while any request is left, and each call streams its own
progress events back. Requests join and leave between steps; a cancelled call (the
orchestrator stops reading) aborts its request at the next step.

With ``parallel.tensor`` or ``parallel.sequence`` above 1 the replica is rank 0 of a
gang (serve/deployments/denoiser_ranks.py). A rank that dies fails the step in flight;
the replica then reports unhealthy and holds its callers until Serve replaces it with a
whole new gang, so their jobs are retried on the new one instead of failing here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from engine.denoise_engine import DenoiseEngine, DroppedEvent, FinishedEvent, InProcessExecutor, StepEvent
from engine.denoise_scheduler import SchedulerConfig
from engine.parallel.rank_group_executor import RankFailed, RankGroupExecutor
from engine.stage_types import GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.denoiser import load_denoiser
from serve.deployments.model_stage import ModelThread, compile_for_default_size, load_stage_context
from serve.object_handoff import ObjectHandoff


logger = logging.getLogger("ray.serve")

# How long a broken gang's callers wait for Serve to replace it before giving up themselves.
REPLACEMENT_WAIT_SECONDS = 300.0


@dataclass(frozen=True)
class DenoiseProgress:
    step: int
    total_steps: int
    step_seconds: float
    batch_size: int
    # Payload bytes the rank group's collectives moved in this step, by kind (empty on one rank).
    communication_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DenoiseDone:
    latents: ObjectHandoff


class DenoiserDeployment:
    """One model's Denoiser: every model of an app has its own, which scales on its own."""

    def __init__(self, config: dict, model: str | None = None):
        app_config, self.spec, placement = load_stage_context(config, "transformer", model)
        settings = app_config.denoiser
        self.request_timeout_s = settings.request_timeout_seconds
        self.model_thread = ModelThread(app_config.torch_threads)
        degree = app_config.parallel.degree
        if degree == 1:
            denoiser = load_denoiser(self.spec, placement, compile_transformer=settings.compile)
            if settings.compile:
                compile_for_default_size(self.model_thread, "DiT", denoiser.warm_up_compiled, self.spec)
            executor = InProcessExecutor(denoiser)
            self.peers = None
        else:
            executor = self._start_rank_group(config, app_config, degree)
        self.engine = DenoiseEngine(
            executor,
            SchedulerConfig(max_batch_size=settings.max_batch_size, max_tokens_per_step=settings.max_tokens_per_step),
        )
        self._sinks: dict[str, asyncio.Queue] = {}
        self._loop_task: asyncio.Task | None = None

    async def denoise(
        self, request: GenerationRequest, text: TextEmbeddings, image: ImageConditioning | None
    ) -> AsyncIterator[DenoiseProgress | DenoiseDone]:
        task = self.engine.executor.denoiser.prepare(request, text, image)
        events: asyncio.Queue = asyncio.Queue()
        self._sinks[task.request_id] = events
        deadline = time.monotonic() + self.request_timeout_s if self.request_timeout_s else None
        finished = False
        await self._hold_if_broken()
        try:
            self.engine.add_request(task, deadline)
            self._ensure_loop()
            while True:
                event = await events.get()
                if isinstance(event, StepEvent):
                    yield DenoiseProgress(event.step, event.total_steps, event.step_seconds, event.batch_size,
                                          dict(event.communication.bytes_by_kind))
                elif isinstance(event, FinishedEvent):
                    finished = True
                    yield DenoiseDone(ObjectHandoff.put(event.latents))
                    return
                else:
                    assert isinstance(event, DroppedEvent)
                    finished = True
                    await self._hold_if_broken()
                    raise TimeoutError(f"denoising {task.request_id} {event.reason} before it finished")
        finally:
            self._sinks.pop(task.request_id, None)
            if not finished:  # the caller went away: free the batch slot at the next step
                self.engine.abort_request(task.request_id)

    async def check_health(self) -> None:
        """Unhealthy once any rank has died or failed a step: Serve then replaces the whole gang."""
        executor = self.engine.executor
        if isinstance(executor, RankGroupExecutor):
            if executor.broken:
                raise RuntimeError(f"Denoiser rank group failed: {executor.failure!r}")
            try:
                await asyncio.wait_for(asyncio.gather(*self.peers.ping_refs()), timeout=30)
            except Exception as error:
                executor.failure = error
                raise RuntimeError(f"a Denoiser rank is unreachable: {error!r}") from error

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics: the work queued inside this replica's engine."""
        load = self.engine.load()
        return {"engine_requests": float(load.requests), "engine_step_batches": float(load.remaining_step_batches)}

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._run_loop())

    async def _run_loop(self) -> None:
        while self.engine.has_unfinished():
            # The batched forward runs in a worker thread; the event loop keeps taking requests.
            events = await self.model_thread.run(self.engine.step)
            if self.peers is not None:
                self._log_communication(events)
            for event in events:
                sink = self._sinks.get(event.request_id)
                if sink is not None:
                    sink.put_nowait(event)

    def _start_rank_group(self, config: dict, app_config, degree: int) -> RankGroupExecutor:
        from ray.util.placement_group import get_current_placement_group

        from serve.deployments.denoiser_ranks import RayPeerRanks, load_parallel_denoiser, start_peer_ranks

        placement_group = get_current_placement_group()
        cpus_per_rank = placement_group.bundle_specs[0].get("CPU", 1) if placement_group else 1
        torch_threads = app_config.torch_threads or max(1, int(cpus_per_rank))
        address, ranks = start_peer_ranks(config, self.spec.name, degree, torch_threads)
        # Rank 0 joins here while the actors start: the rendezvous waits for all of them.
        denoiser, communication = load_parallel_denoiser(config, self.spec.name, 0, address)
        self.peers = RayPeerRanks(ranks)
        return RankGroupExecutor(denoiser, self.peers, communication)

    async def _hold_if_broken(self) -> None:
        """A broken gang cannot run a step: keep the caller until Serve replaces this replica.

        The caller then sees the replica die and its job is retried on the new gang; an
        immediate error would spend the job's attempts on this replica while it is still
        routable.
        """
        executor = self.engine.executor
        if isinstance(executor, RankGroupExecutor) and executor.broken:
            await asyncio.sleep(REPLACEMENT_WAIT_SECONDS)
            raise RankFailed(f"the Denoiser rank group failed and was not replaced: {executor.failure!r}")

    def _log_communication(self, events) -> None:
        step = next((event for event in events if isinstance(event, StepEvent)), None)
        if step is not None:
            logger.info("denoise step: batch %d, %.3fs, communication %s", step.batch_size, step.step_seconds,
                        step.communication.bytes_by_kind)
