"""The Denoiser deployment: a continuous-batching engine loop inside each replica.

Every in-flight ``denoise`` call is one request inside the engine; the loop runs one
batched step at a time while any request is left, and each call streams its own
progress events back. Requests join and leave between steps; a cancelled call (the
orchestrator stops reading) aborts its request at the next step.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.denoise_engine import DenoiseEngine, DroppedEvent, FinishedEvent, InProcessExecutor, StepEvent
from engine.denoise_scheduler import SchedulerConfig
from engine.initial_noise import initial_latents
from engine.stage_types import DenoiseTask, GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.denoiser import WanDenoiser
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.object_handoff import ObjectHandoff


@dataclass(frozen=True)
class DenoiseProgress:
    step: int
    total_steps: int
    step_seconds: float
    batch_size: int


@dataclass(frozen=True)
class DenoiseDone:
    latents: ObjectHandoff


class DenoiserDeployment:
    def __init__(self, config: dict):
        app_config, self.spec, placement = load_stage_context(config, "transformer")
        settings = app_config.denoiser
        self.request_timeout_s = settings.request_timeout_seconds
        self.engine = DenoiseEngine(
            InProcessExecutor(WanDenoiser(self.spec, placement)),
            SchedulerConfig(max_batch_size=settings.max_batch_size, max_tokens_per_step=settings.max_tokens_per_step),
        )
        self.model_thread = ModelThread(app_config.torch_threads)
        self._sinks: dict[str, asyncio.Queue] = {}
        self._loop_task: asyncio.Task | None = None

    async def denoise(
        self, request: GenerationRequest, text: TextEmbeddings, image: ImageConditioning | None
    ) -> AsyncIterator[DenoiseProgress | DenoiseDone]:
        task = DenoiseTask(
            request_id=request.request_id,
            initial_latents=initial_latents(request, self.spec.geometry),
            text=text,
            image=image,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            flow_shift=request.flow_shift,
        )
        events: asyncio.Queue = asyncio.Queue()
        self._sinks[task.request_id] = events
        deadline = time.monotonic() + self.request_timeout_s if self.request_timeout_s else None
        finished = False
        try:
            self.engine.add_request(task, deadline)
            self._ensure_loop()
            while True:
                event = await events.get()
                if isinstance(event, StepEvent):
                    yield DenoiseProgress(event.step, event.total_steps, event.step_seconds, event.batch_size)
                elif isinstance(event, FinishedEvent):
                    finished = True
                    yield DenoiseDone(ObjectHandoff.put(event.latents))
                    return
                else:
                    assert isinstance(event, DroppedEvent)
                    finished = True
                    raise TimeoutError(f"denoising {task.request_id} {event.reason} before it finished")
        finally:
            self._sinks.pop(task.request_id, None)
            if not finished:  # the caller went away: free the batch slot at the next step
                self.engine.abort_request(task.request_id)

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
            for event in await self.model_thread.run(self.engine.step):
                sink = self._sinks.get(event.request_id)
                if sink is not None:
                    sink.put_nowait(event)
