"""The Denoiser deployment: a Serve shell around the engine's AsyncDenoiseEngine.

Every in-flight ``denoise`` call is one request in the replica's continuous-batching
engine, which owns its step thread. With ``parallel.tensor`` or ``parallel.sequence``
above 1 the replica is rank 0 of a gang (denoiser_ranks.py). A rank that dies fails the
step in flight; the replica then reports unhealthy and holds its callers until Serve
replaces it with a whole new gang, so their jobs are retried there.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator

from engine.batching.async_denoise_engine import AsyncDenoiseEngine, DenoiseDone, DenoiseDropped, DenoiseProgress
from engine.batching.denoise_engine import InProcessExecutor
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.parallel.rank_group_executor import RankFailed
from engine.stage_types import GenerationRequest, ImageConditioning, TextEmbeddings
from engine.stages.loading import load_denoiser
from serve.app_config import AppConfig
from serve.deployments.model_stage import (ModelThread, compile_for_default_size, keep_torch_single_threaded,
                                          load_stage_context, set_torch_threads)

# How long a broken gang's callers wait for Serve to replace it before giving up themselves.
REPLACEMENT_WAIT_SECONDS = 300.0


class DenoiserDeployment:
    """One model's Denoiser: every model of an app has its own, which scales on its own."""

    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, self.spec, placement = load_stage_context(config, "transformer", model)
        settings, degree, self.peers, on_step = app_config.denoiser, app_config.parallel.degree, None, None
        self.request_timeout_s = settings.request_timeout_seconds
        if degree == 1:
            denoiser = load_denoiser(self.spec, placement, compile_transformer=settings.compile)
            if settings.compile:
                compile_thread = ModelThread(app_config.torch_threads)
                compile_for_default_size(compile_thread, "DiT", denoiser.warm_up_compiled, self.spec)
                compile_thread.close()  # its idle OpenMP workers would slow the engine's (keep_torch_single_threaded)
            executor = InProcessExecutor(denoiser)
        else:
            from serve.deployments.denoiser_ranks import log_step_communication, start_rank_group

            executor, self.peers = start_rank_group(app_config, self.spec.name, degree)
            on_step = log_step_communication
        scheduling = SchedulerConfig(max_batch_size=settings.max_batch_size,
                                     max_tokens_per_step=settings.max_tokens_per_step)
        self.engine = AsyncDenoiseEngine(executor, scheduling, on_step=on_step,
                                         thread_initializer=functools.partial(set_torch_threads,
                                                                              app_config.torch_threads))
        self.engine.run_blocking(int)  # the step thread has pinned its torch threads ...
        keep_torch_single_threaded()  # ... so every other thread can be left on one

    async def denoise(self, request: GenerationRequest, text: TextEmbeddings,
                      image: ImageConditioning | None) -> AsyncIterator[DenoiseProgress | DenoiseDone]:
        task = self.engine.executor.denoiser.prepare(request, text, image)
        deadline = time.monotonic() + self.request_timeout_s if self.request_timeout_s else None
        await self._hold_if_broken()
        try:
            async for event in self.engine.denoise(task, deadline):
                yield event
        except DenoiseDropped:
            await self._hold_if_broken()
            raise

    async def check_health(self) -> None:
        """Unhealthy once any rank has died or failed a step: Serve then replaces the whole gang."""
        if self.peers is not None:
            from serve.deployments.denoiser_ranks import check_rank_group

            await check_rank_group(self.engine.executor, self.peers)

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics: the work queued inside this replica's engine."""
        load = self.engine.load()
        return {"engine_requests": float(load.requests), "engine_step_batches": float(load.remaining_step_batches)}

    async def _hold_if_broken(self) -> None:
        """Keep a broken gang's caller until Serve replaces this replica: its job is then
        retried on the new gang instead of spending its attempts here while still routable."""
        failure = getattr(self.engine.executor, "failure", None)
        if failure is not None:
            await asyncio.sleep(REPLACEMENT_WAIT_SECONDS)
            raise RankFailed(f"the Denoiser rank group failed and was not replaced: {failure!r}")
