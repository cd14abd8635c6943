"""The Denoiser deployment: one request's steps streamed back as progress events.

Requests on one replica interleave at step boundaries (a lock around each step), so a
long request never blocks a short one for its whole run and cancellation lands at the
next step. Step-level continuous batching replaces the lock with an engine loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.initial_noise import initial_latents
from engine.stage_types import DenoiseTask, GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.denoiser import WanDenoiser
from serve.deployments.model_stage import load_stage_context
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
        _, self.spec, placement = load_stage_context(config, "transformer")
        self.stage = WanDenoiser(self.spec, placement)
        self._step_lock = asyncio.Lock()

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
        state = self.stage.start(task)
        while not state.finished:
            async with self._step_lock:
                started = time.perf_counter()
                await asyncio.to_thread(self.stage.step, [state])
                elapsed = time.perf_counter() - started
            yield DenoiseProgress(state.steps_done, state.total_steps, elapsed, batch_size=1)
        yield DenoiseDone(ObjectHandoff.put(self.stage.finish(state)))
