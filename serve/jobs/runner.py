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
from serve.jobs.store import (
    TERMINAL_STATUSES,
    JobRecord,
    JobStatus,
    JobStore,
    JobStoreUnavailable,
    LeaseLost,
    WebhookOutbox,
)
from serve.jobs.updates import JobUpdates
from serve.metrics import VideoServeMetrics

logger = logging.getLogger("videoserve.jobs")

# Where each stage puts the progress bar: denoising is most of the work.
STAGE_PROGRESS = {"prompt_expander": 1, "text_encoder": 2, "image_conditioner": 4, "vae_decoder": 91, "post_processor": 95}
DENOISE_PROGRESS = (5, 90)


class JobCancelled(Exception):
    pass


class StageFailed(RuntimeError):
    """A stage's call raised or ran past its deadline: the job's error and the failure metrics
    name that stage. ``str()`` has the detail, for the log; ``client_message`` is what the
    job's error says to its client, which never carries a stage's exception text."""

    def __init__(self, stage: str, error: BaseException, timeout_s: float | None = None):
        super().__init__(f"{stage} failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.timed_out = isinstance(error, TimeoutError)
        self.code = "stage_timeout" if self.timed_out else "stage_failed"
        self.client_message = (f"the {stage} stage did not finish within {timeout_s:g} s" if self.timed_out
                               else f"the {stage} stage failed")


# A write that finds the store unreachable is retried with this backoff (seconds, doubling to
# the cap) until the job's lease would have run out: a Redis restart costs the job nothing.
STORE_RETRY_FIRST_DELAY_S = 0.1
STORE_RETRY_MAX_DELAY_S = 1.0

# The recent job duration the queue's Retry-After is estimated from: an EWMA, seeded here.
INITIAL_JOB_SECONDS = 30.0
JOB_SECONDS_SMOOTHING = 0.2


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
        updates: JobUpdates | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.routes = routes
        self.store = store
        self.artifacts = artifacts
        self.metrics = metrics
        # Every record this runner writes is pushed here: to event streams, and to its own claim loop.
        self.updates = updates or JobUpdates()
        self._clock = clock  # paces the durable progress writes
        self.owner = f"runner-{uuid.uuid4().hex[:12]}"
        self._running: dict[str, asyncio.Task] = {}
        self._metadata: dict[str, dict] = {}  # job id -> metadata of the jobs this runner holds
        self._background: list[asyncio.Task] = []
        self._stopping = False
        self.mean_job_seconds = INITIAL_JOB_SECONDS
        # Set when this runner ends a job with a webhook: the outbox's deliverer wakes at once.
        self.on_outbox_written: Callable[[], None] = lambda: None

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
                # A shutdown is no failure of the job: the attempt its claim counted is given back.
                self.store.update(job_id, fence=self.owner, status=JobStatus.QUEUED, stage=None, progress=0,
                                  lease_owner=None, lease_expires_at=None, attempts=max(0, current.attempts - 1))
            except LeaseLost:
                continue  # another runner took it over already
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
                job = await asyncio.to_thread(self.store.claim, self.owner, jobs.lease_seconds,
                                              max_attempts=jobs.max_attempts)
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
            try:
                async with asyncio.timeout(self.config.jobs.job_timeout_seconds):
                    await self._execute(job)
            except TimeoutError:
                logger.warning("job %s attempt %d ran past jobs.job_timeout_seconds", job.id, job.attempts)
                await self._fail(job.id, "job_timeout",
                                 f"the job did not finish within {self.config.jobs.job_timeout_seconds:g} s")
        except LeaseLost:
            # Another runner holds the job now (this one looked dead to the store): it finishes
            # the job; this copy writes nothing more.
            logger.warning("job %s: lease lost to another runner; this copy stops", job.id)
        except JobStoreUnavailable:
            # The store stayed away longer than the lease: nothing more can be written, and the
            # job's lease runs out, so it is claimed again once the store is back (never lost).
            logger.warning("job %s: the job store stayed unreachable; the job will be claimed again", job.id)
        except asyncio.CancelledError:
            # Shutting down leaves the job in progress: its lease expires and another runner
            # (or this app after a restart) resumes it. Otherwise it was cancelled or deleted.
            if not self._stopping:
                try:
                    current = await self._store_call(self.store.get, job.id)
                    if current is None or current.cancel_requested:
                        await self._finish_cancelled(job.id)
                except (LeaseLost, JobStoreUnavailable):
                    pass
        except Exception as error:  # a stage failed: retry or give up, never drop the job
            try:
                await self._handle_failure(job, error)
            except (LeaseLost, JobStoreUnavailable):
                pass  # another runner has it, or the lease runs out and it is claimed again
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
                                          write_frames=self.config.storage.keep_frames)
        output_dir = str(self.artifacts.job_dir(job.id))
        result: PostProcessResult = await self._timed(
            "post_processor", handles.post_processor.process.remote(frames, post_options, output_dir)
        )
        await self._complete(job, request, result, latents.reused_steps)

    async def _denoise(self, denoiser, job_id: str, request: GenerationRequest, text, image_conditioning):
        started = time.perf_counter()
        timeout_s = self.config.jobs.stage_timeout_seconds
        self.metrics.stage_in_flight.labels("denoiser").inc()
        stream = denoiser.options(stream=True).denoise.remote(request, text, image_conditioning)
        try:
            async with asyncio.timeout(timeout_s):
                latents = await self._follow_denoising(stream, job_id)
            self.metrics.stage_latency.labels("denoiser").observe(time.perf_counter() - started)
            return latents
        except (asyncio.CancelledError, JobCancelled, LeaseLost, JobStoreUnavailable):
            # Not the denoiser's failure: the job was stopped, or its progress could not be written.
            stream.cancel()
            raise
        except Exception as error:
            stream.cancel()
            self.metrics.stage_failures.labels("denoiser").inc()
            raise StageFailed("denoiser", error, timeout_s) from error
        finally:
            self.metrics.stage_in_flight.labels("denoiser").dec()

    async def _follow_denoising(self, stream, job_id: str):
        """The Denoiser's progress stream into the job's record and event streams; its latents."""
        low, high = DENOISE_PROGRESS
        write_interval = self.config.jobs.progress_write_interval_seconds
        last_write = self._clock()
        current = None
        async for event in stream:
            if isinstance(event, DenoiseDone):
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
                    raise asyncio.CancelledError()
            else:  # every step still reaches the job's event streams, from memory
                metadata = {**current.metadata, "step_seconds": event.step_seconds}
                self.updates.publish(replace_record(current, metadata=metadata, **changes))
        raise RuntimeError("the denoiser stream ended without latents")

    def _observe_step(self, event: DenoiseProgress) -> None:
        self.metrics.steps.inc()
        self.metrics.step_seconds.observe(event.step_seconds)
        self.metrics.batch_size.observe(event.batch_size)
        for kind, step_bytes in event.communication_bytes.items():
            # Every request in the step reports the step's volume: count each its share.
            self.metrics.communication_bytes.labels(kind).inc(step_bytes / event.batch_size)

    async def _timed(self, stage: str, response):
        started = time.perf_counter()
        timeout_s = self.config.jobs.stage_timeout_seconds
        self.metrics.stage_in_flight.labels(stage).inc()
        try:
            async with asyncio.timeout(timeout_s):
                return await response
        except Exception as error:
            if isinstance(error, TimeoutError):
                response.cancel()  # the replica stops working on it
            self.metrics.stage_failures.labels(stage).inc()
            raise StageFailed(stage, error, timeout_s) from error
        finally:
            self.metrics.stage_in_flight.labels(stage).dec()
            self.metrics.stage_latency.labels(stage).observe(time.perf_counter() - started)

    async def _progress(self, job_id: str, stage: str) -> None:
        current = await self._update(job_id, stage=stage, progress=STAGE_PROGRESS[stage])
        if current is None or current.cancel_requested:
            raise asyncio.CancelledError()

    async def _update(self, job_id: str, **changes) -> JobRecord | None:
        """A fenced write: LeaseLost if another runner took the job over, so a runner that
        lost its lease never overwrites (or completes) the job its successor is running."""
        # This runner holds the job's lease, so its copy of the metadata is current: merging
        # into it saves a read of the record on every denoising step.
        if "metadata" in changes:
            changes["metadata"] = {**self._metadata.get(job_id, {}), **changes["metadata"]}
        record = await self._store_call(self.store.update, job_id, fence=self.owner, **changes)
        if record is not None:
            if job_id in self._metadata:
                self._metadata[job_id] = record.metadata
            self.updates.publish(record)
        return record

    async def _store_call(self, method, *args, **kwargs):
        """``method`` of the store, off the event loop, through a short store outage.

        Retried while the job's lease could still be ours (its heartbeat cannot renew it
        either); past that JobStoreUnavailable, and the job is claimed again later. A write
        retried after it landed is harmless: updates are fenced, and re-applying the same
        changes writes the same record.
        """
        deadline = time.monotonic() + self.config.jobs.lease_seconds
        delay = STORE_RETRY_FIRST_DELAY_S
        while True:
            try:
                return await asyncio.to_thread(method, *args, **kwargs)
            except JobStoreUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("the job store is unreachable; retrying in %.1f s", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORE_RETRY_MAX_DELAY_S)

    def _ending(self, record_has_webhook: bool, event_type: str, now: float) -> dict:
        """The fields every end of a job writes with its status, in the same write: the lease
        given up, when the record expires, and its webhook put in the outbox."""
        ending = {"stage": None, "completed_at": now, "lease_owner": None, "lease_expires_at": None,
                  "expires_at": now + self.config.storage.retention_seconds}
        if record_has_webhook and event_type:
            ending["webhook_outbox"] = WebhookOutbox.new(event_type, now)
        return ending

    async def _complete(self, job: JobRecord, request: GenerationRequest, result: PostProcessResult,
                        reused_steps: int | None = None) -> None:
        artifacts = {"video": result.video_path, "thumbnail": result.thumbnail_path}
        if result.spritesheet_path:
            artifacts["spritesheet"] = result.spritesheet_path
        if result.frames_path:
            artifacts["frames"] = result.frames_path
        # On disk before the record says completed: a crash right after the commit must not
        # leave a completed job whose files are empty or missing.
        await asyncio.to_thread(self.artifacts.make_durable, list(artifacts.values()))
        now = time.time()
        record = await self._update(
            job.id,
            status=JobStatus.COMPLETED,
            progress=100,
            artifacts=artifacts,
            metadata={
                "num_frames": result.num_frames,
                "width": result.width,
                "height": result.height,
                "fps": result.fps,
                **({"quality": {"flicker": result.flicker}} if result.flicker is not None else {}),
                **({"step_cache": {**request.step_cache.describe(), "reused_steps": reused_steps,
                                   "total_steps": request.num_inference_steps}}
                   if request.step_cache is not None else {}),
            },
            **self._ending(job.webhook_url is not None, "video.completed", now),
        )
        if record is None:  # deleted while it ran: leave nothing behind
            self.artifacts.delete(job.id)
            return
        self.metrics.jobs_finished.labels("completed").inc()
        self.metrics.job_duration.observe(now - job.created_at)
        if result.flicker is not None:
            self.metrics.video_flicker.labels(job.model).observe(result.flicker)
        self.mean_job_seconds += JOB_SECONDS_SMOOTHING * ((now - job.created_at) - self.mean_job_seconds)
        self._outbox_written(record)

    async def _finish_cancelled(self, job_id: str) -> None:
        record = await self._update(job_id, status=JobStatus.CANCELLED, **self._ending(False, "", time.time()))
        if record is None:  # deleted through the API, which counted it and removed its files
            self.artifacts.delete(job_id)
            return
        self.metrics.jobs_finished.labels("cancelled").inc()

    async def _handle_failure(self, job: JobRecord, error: Exception) -> None:
        # The detail (a stage's exception text) goes to the log; the client sees a code and a
        # sentence that names the stage.
        logger.warning("job %s attempt %d failed: %s", job.id, job.attempts, error,
                       exc_info=(type(error), error, error.__traceback__))
        current = await self._store_call(self.store.get, job.id)
        if current is None or current.status in TERMINAL_STATUSES:
            return
        code, message = ((error.code, error.client_message) if isinstance(error, StageFailed)
                         else ("generation_failed", "the job failed"))
        if current.attempts < self.config.jobs.max_attempts:
            self.metrics.job_retries.inc()
            await self._update(job.id, status=JobStatus.QUEUED, stage=None, progress=0, lease_owner=None,
                               lease_expires_at=None, error_message=f"attempt {current.attempts}: {message}")
            return
        await self._fail(job.id, code, f"{message} (attempt {current.attempts} of {self.config.jobs.max_attempts})")

    async def _fail(self, job_id: str, code: str, message: str) -> None:
        current = await self._store_call(self.store.get, job_id)
        if current is None:
            return
        record = await self._update(job_id, status=JobStatus.FAILED, error_code=code, error_message=message,
                                    **self._ending(current.webhook_url is not None, "video.failed", time.time()))
        self.metrics.jobs_finished.labels("failed").inc()
        if record is not None:
            self._outbox_written(record)

    def _outbox_written(self, record: JobRecord) -> None:
        if record.webhook_outbox is not None:
            self.on_outbox_written()


def replace_record(record: JobRecord, **changes) -> JobRecord:
    """``record`` with ``changes``, as the store would give it back (not written)."""
    return record.model_copy(update={**changes, "updated_at": time.time()})
