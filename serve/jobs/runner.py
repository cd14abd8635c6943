"""The orchestrator: claims jobs from the store and runs each through the stage deployments.

Every ingress replica runs one JobRunner. Jobs are claimed with a lease that a heartbeat
renews; a job whose runner died (or a whole app that stopped) is claimed again once its
lease expires, so an accepted job is never lost.

Tensors move one way: the runner awaits each stage's DeploymentResponse and passes the
value to the next stage's call. Serve's model composition (handing the response on
uncollected) moves a large tensor for about half the overhead, but it cannot carry the
Denoiser's output, which is the last item of its progress stream, and it hides when and
where an upstream stage failed; at a 720p Wan request's sizes the relay costs ~0.15 s
more per job on a 2-core VM (benchmarks/RESULTS.md, ``benchmarks.stage_handoff``).
Values returned to the runner are owned by it, so a stage replica that scales down
after answering takes nothing a job still needs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from engine.batching.async_denoise_engine import DenoiseDone, DenoiseProgress
from engine.models.model_spec import ModelSpec, Task
from engine.post_processing.post_processor import PostProcessOptions, PostProcessResult
from engine.stage_types import GenerationRequest, TextRequest
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.store import TERMINAL_STATUSES, JobRecord, JobStatus, JobStore
from serve.jobs.updates import JobUpdates
from serve.metrics import VideoServeMetrics
from serve.webhooks import WebhookSender

logger = logging.getLogger("videoserve.jobs")

# Where each stage puts the progress bar: denoising is most of the work.
STAGE_PROGRESS = {"prompt_expander": 1, "text_encoder": 2, "image_conditioner": 4, "vae_decoder": 91, "post_processor": 95}
DENOISE_PROGRESS = (5, 90)


class JobCancelled(Exception):
    pass


class JobLeaseLost(Exception):
    pass


class StageFailed(RuntimeError):
    """A stage's call raised: the job's error and the failure metrics name that stage."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"{stage} failed: {error}")
        self.stage = stage


@dataclass
class StageHandles:
    text_encoder: Any
    denoiser: Any
    vae_decoder: Any
    post_processor: Any
    image_conditioner: Any | None = None
    prompt_expander: Any | None = None


@dataclass
class ModelRoute:
    """One served model: its spec and the stage deployments its jobs run through."""

    spec: ModelSpec
    handles: StageHandles


class JobRunner:
    def __init__(
        self,
        config: AppConfig,
        routes: dict[str, ModelRoute],
        store: JobStore,
        artifacts: ArtifactStore,
        metrics: VideoServeMetrics,
        webhooks: WebhookSender | None,
        updates: JobUpdates | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.routes = routes
        self.store = store
        self.artifacts = artifacts
        self.metrics = metrics
        self.webhooks = webhooks
        # Every record this runner writes is pushed here: to event streams, and to its own claim loop.
        self.updates = updates or JobUpdates()
        self._clock = clock  # paces the durable progress writes
        self.owner = f"runner-{uuid.uuid4().hex[:12]}"
        self._running: dict[str, asyncio.Task] = {}
        self._metadata: dict[str, dict] = {}  # job id -> metadata of the jobs this runner holds
        self._background: list[asyncio.Task] = []
        self._stopping = False

    def start(self) -> None:
        self._background = [asyncio.create_task(self._claim_loop()), asyncio.create_task(self._heartbeat_loop())]

    async def stop(self) -> None:
        """Stop claiming and hand running jobs back to the queue for whoever runs next."""
        self._stopping = True
        running = dict(self._running)
        for task in [*self._background, *running.values()]:
            task.cancel()
        await asyncio.gather(*self._background, *running.values(), return_exceptions=True)
        for job_id in running:
            try:
                current = self.store.get(job_id)
                if current is None or current.status in TERMINAL_STATUSES:
                    continue  # it finished while stopping: handing it back would run it twice
                self.store.update(job_id, status=JobStatus.QUEUED, stage=None, progress=0, lease_owner=None,
                                  lease_expires_at=None)
            except Exception:  # the lease then expires and the job is resumed all the same
                logger.exception("handing %s back to the queue failed", job_id)

    @property
    def running_jobs(self) -> int:
        return len(self._running)

    def cancel_local(self, job_id: str) -> bool:
        """Stop a job this replica runs now; it ends at the next step boundary."""
        task = self._running.get(job_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def _claim_loop(self) -> None:
        jobs = self.config.jobs
        while not self._stopping:
            if len(self._running) >= jobs.max_concurrent_per_ingress:
                await asyncio.sleep(jobs.poll_interval_seconds)
                continue
            job = None
            self.updates.expect_claim()
            try:
                job = await asyncio.to_thread(self.store.claim, self.owner, jobs.lease_seconds)
            except Exception:  # a store outage must not kill the loop
                logger.exception("claiming a job failed")
            if job is None:
                # Woken at once by a job queued through this replica; jobs queued through
                # another replica (or whose lease expired) are found at the next poll.
                await self.updates.wait_for_queued(jobs.poll_interval_seconds)
                continue
            self.updates.publish(job)
            self._running[job.id] = asyncio.create_task(self._run(job))
            self.metrics.jobs_running.set(len(self._running))

    async def _heartbeat_loop(self) -> None:
        lease = self.config.jobs.lease_seconds
        while not self._stopping:
            await asyncio.sleep(lease / 3)
            for job_id, task in list(self._running.items()):
                try:
                    held = await asyncio.to_thread(self.store.renew, job_id, self.owner, lease)
                except Exception:
                    logger.exception("renewing the lease of %s failed", job_id)
                    continue
                if not held:  # another runner took it over (we looked dead): stop our copy
                    task.cancel(msg="lease lost")

    async def _run(self, job: JobRecord) -> None:
        self._metadata[job.id] = dict(job.metadata)
        try:
            await self._execute(job)
        except asyncio.CancelledError:
            current = await asyncio.to_thread(self.store.get, job.id)
            if self._stopping:
                # Shutting down: leave the job in progress; its lease expires and another
                # runner (or this app after a restart) resumes it.
                pass
            elif current is None or current.cancel_requested:
                await self._finish_cancelled(job.id)
        except Exception as error:  # a stage failed: retry or give up, never drop the job
            await self._handle_failure(job, error)
        finally:
            self._running.pop(job.id, None)
            self._metadata.pop(job.id, None)
            self.metrics.jobs_running.set(len(self._running))

    async def _execute(self, job: JobRecord) -> None:
        if job.cancel_requested:
            raise asyncio.CancelledError()
        route = self.routes.get(job.model)
        if route is None:  # a job of a model this app no longer serves (the config changed under it)
            raise RuntimeError(f"model {job.model!r} is not served by this app (models: {', '.join(self.routes)})")
        spec = job.spec
        # Only the image conditioner reads the input image; every other stage gets the request without it.
        request = spec.generation_request(job.id)
        options = spec.post_processing
        handles = route.handles

        if options.expand_prompt:
            await self._progress(job.id, "prompt_expander")
            expanded = await self._timed("prompt_expander", handles.prompt_expander.expand.remote(request.prompt))
            request = replace(request, prompt=expanded)
            await self._update(job.id, metadata={"expanded_prompt": expanded})

        await self._progress(job.id, "text_encoder")
        # Each stage gets what it reads: the text encoder its texts, the image conditioner the image.
        text = await self._timed("text_encoder", handles.text_encoder.encode.remote(TextRequest.of(request)))
        image_conditioning = None
        if request.task is Task.IMAGE_TO_VIDEO:
            await self._progress(job.id, "image_conditioner")
            image = await asyncio.to_thread(Path(job.input_image_path).read_bytes)
            image_conditioning = await self._timed(
                "image_conditioner", handles.image_conditioner.condition.remote(replace(request, image=image))
            )

        latents = await self._denoise(handles.denoiser, job.id, request, text, image_conditioning)

        await self._progress(job.id, "vae_decoder")
        frames = await self._timed("vae_decoder", handles.vae_decoder.decode.remote(latents, request.fps))
        await self._progress(job.id, "post_processor")
        post_options = PostProcessOptions(interpolate_fps=options.interpolate_fps, upscale=options.upscale,
                                          write_frames=True)
        output_dir = str(self.artifacts.job_dir(job.id))
        result: PostProcessResult = await self._timed(
            "post_processor", handles.post_processor.process.remote(frames, post_options, output_dir)
        )
        await self._complete(job, request, result)

    async def _denoise(self, denoiser, job_id: str, request: GenerationRequest, text, image_conditioning):
        low, high = DENOISE_PROGRESS
        started = time.perf_counter()
        write_interval = self.config.jobs.progress_write_interval_seconds
        last_write = self._clock()
        current = None
        self.metrics.stage_in_flight.labels("denoiser").inc()
        stream = denoiser.options(stream=True).denoise.remote(request, text, image_conditioning)
        try:
            async for event in stream:
                if isinstance(event, DenoiseDone):
                    self.metrics.stage_latency.labels("denoiser").observe(time.perf_counter() - started)
                    return event.latents
                assert isinstance(event, DenoiseProgress)
                self._observe_step(event)
                changes = {
                    "stage": "denoiser",
                    "step": event.step,
                    "total_steps": event.total_steps,
                    "progress": low + (high - low) * event.step // event.total_steps,
                }
                now = self._clock()
                if current is None or now - last_write >= write_interval:
                    # Durable: the first step (the stage change) and then at most once per interval.
                    current = await self._update(job_id, **changes, metadata={"step_seconds": event.step_seconds})
                    last_write = now
                    if current is None or current.cancel_requested:
                        stream.cancel()
                        raise asyncio.CancelledError()
                else:  # every step still reaches the job's event streams, from memory
                    metadata = {**current.metadata, "step_seconds": event.step_seconds}
                    self.updates.publish(replace_record(current, metadata=metadata, **changes))
            raise RuntimeError("the denoiser stream ended without latents")
        except (asyncio.CancelledError, JobCancelled):
            stream.cancel()
            raise
        except Exception as error:
            self.metrics.stage_failures.labels("denoiser").inc()
            raise StageFailed("denoiser", error) from error
        finally:
            self.metrics.stage_in_flight.labels("denoiser").dec()

    def _observe_step(self, event: DenoiseProgress) -> None:
        self.metrics.steps.inc()
        self.metrics.step_seconds.observe(event.step_seconds)
        self.metrics.batch_size.observe(event.batch_size)
        for kind, step_bytes in event.communication_bytes.items():
            # Every request in the step reports the step's volume: count each its share.
            self.metrics.communication_bytes.labels(kind).inc(step_bytes / event.batch_size)

    async def _timed(self, stage: str, response):
        started = time.perf_counter()
        self.metrics.stage_in_flight.labels(stage).inc()
        try:
            return await response
        except Exception as error:
            self.metrics.stage_failures.labels(stage).inc()
            raise StageFailed(stage, error) from error
        finally:
            self.metrics.stage_in_flight.labels(stage).dec()
            self.metrics.stage_latency.labels(stage).observe(time.perf_counter() - started)

    async def _progress(self, job_id: str, stage: str) -> None:
        current = await self._update(job_id, stage=stage, progress=STAGE_PROGRESS[stage])
        if current is None or current.cancel_requested:
            raise asyncio.CancelledError()

    async def _update(self, job_id: str, **changes) -> JobRecord | None:
        # This runner holds the job's lease, so its copy of the metadata is current: merging
        # into it saves a read of the record on every denoising step.
        if "metadata" in changes:
            changes["metadata"] = {**self._metadata.get(job_id, {}), **changes["metadata"]}
        record = await asyncio.to_thread(self.store.update, job_id, **changes)
        if record is not None:
            if job_id in self._metadata:
                self._metadata[job_id] = record.metadata
            self.updates.publish(record)
        return record

    async def _complete(self, job: JobRecord, request: GenerationRequest, result: PostProcessResult) -> None:
        artifacts = {"video": result.video_path, "thumbnail": result.thumbnail_path}
        if result.frames_path:
            artifacts["frames"] = result.frames_path
        now = time.time()
        record = await self._update(
            job.id,
            status=JobStatus.COMPLETED,
            progress=100,
            stage=None,
            completed_at=now,
            artifacts=artifacts,
            metadata={
                "num_frames": result.num_frames,
                "width": result.width,
                "height": result.height,
                "fps": result.fps,
            },
        )
        if record is None:  # deleted while it ran: leave nothing behind
            self.artifacts.delete(job.id)
            return
        await asyncio.to_thread(self.store.release, job.id, self.owner)
        self.metrics.jobs_finished.labels("completed").inc()
        self.metrics.job_duration.observe(now - job.created_at)
        await self._notify(record, "video.completed")

    async def _finish_cancelled(self, job_id: str) -> None:
        record = await self._update(job_id, status=JobStatus.CANCELLED, stage=None, completed_at=time.time())
        if record is None:  # deleted through the API, which counted it and removed its files
            self.artifacts.delete(job_id)
            return
        await asyncio.to_thread(self.store.release, job_id, self.owner)
        self.metrics.jobs_finished.labels("cancelled").inc()

    async def _handle_failure(self, job: JobRecord, error: Exception) -> None:
        logger.warning("job %s attempt %d failed: %r", job.id, job.attempts, error)
        current = await asyncio.to_thread(self.store.get, job.id)
        if current is None or current.status in TERMINAL_STATUSES:
            return
        if current.attempts < self.config.jobs.max_attempts:
            self.metrics.job_retries.inc()
            await self._update(job.id, status=JobStatus.QUEUED, stage=None, progress=0, lease_owner=None,
                               lease_expires_at=None, error_message=f"attempt {current.attempts} failed: {error}")
            return
        record = await self._update(
            job.id,
            status=JobStatus.FAILED,
            stage=None,
            completed_at=time.time(),
            error_code="generation_failed",
            error_message=f"failed after {current.attempts} attempts: {error}",
        )
        await asyncio.to_thread(self.store.release, job.id, self.owner)
        self.metrics.jobs_finished.labels("failed").inc()
        if record is not None:
            await self._notify(record, "video.failed")

    async def _notify(self, record: JobRecord, event_type: str) -> None:
        if self.webhooks is None or not record.webhook_url:
            return
        from serve.video_object import video_object

        payload = video_object(record).model_dump(mode="json")
        # Delivery retries with backoff in the background; the job is already final.
        asyncio.create_task(self.webhooks.send(record.webhook_url, event_type, payload))


def replace_record(record: JobRecord, **changes) -> JobRecord:
    """``record`` with ``changes``, as the store would give it back (not written)."""
    return record.model_copy(update={**changes, "updated_at": time.time()})
