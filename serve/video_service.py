"""What the HTTP routes do, apart from HTTP: create, read, list, delete jobs."""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from engine.models.model_spec import ModelSpec
from engine.prompt_grammars import prompt_note
from engine.request_validation import RequestValidationError, validate_generation
from engine.stage_types import GenerationRequest
from serve.video_object import VideoObject, video_object
from serve.app_config import AppConfig
from serve.artifact_store import VARIANT_FILES, ArtifactStore, StorageFull, is_disk_full
from serve.jobs.runner import JobRunner
from serve.jobs.spec import JobSpec, PostProcessing
from serve.jobs.store import TERMINAL_STATUSES, Admission, JobRecord, JobStatus, JobStore, QueueFull
from serve.jobs.updates import JobUpdates
from serve.metrics import VideoServeMetrics
from serve.tenant import SHARED_TENANT, Tenant
from serve.service_errors import InsufficientStorage, InvalidField, NotFound, NotReady, Overloaded

logger = logging.getLogger("videoserve.metrics")

# Until a replica has finished jobs of its own, the queue's Retry-After assumes this per job.
DEFAULT_JOB_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 600
STORAGE_FULL_RETRY_AFTER_SECONDS = 60

# A scrape never waits longer than this on another actor (a cache, Serve's controller).
SCRAPE_READ_TIMEOUT_S = 2.0


class VideoService:
    def __init__(self, config: AppConfig, specs: dict[str, ModelSpec], store: JobStore, artifacts: ArtifactStore,
                 metrics: VideoServeMetrics, runner: JobRunner | None, expander_enabled: bool,
                 caches: dict | None = None, stage_replicas: Callable[[], dict[str, int]] | None = None,
                 updates: JobUpdates | None = None):
        self.config = config
        # Every model this app serves, in config order: the first serves requests that name none.
        self.specs = specs
        self.default_model = next(iter(specs))
        self.store = store
        self.artifacts = artifacts
        self.metrics = metrics
        self.runner = runner
        self.expander_enabled = expander_enabled
        self.learned_upscale_factor = config.post_processing.learned_upscale_factor()
        self.caches = caches or {}
        # Reads Ray Serve's running replicas per stage (a blocking call to its controller).
        self.stage_replicas = stage_replicas
        # The runner's channel when there is one, so streams see what the runner writes.
        self.updates = updates or (runner.updates if runner is not None else JobUpdates())

    def model_spec(self, model: str | None) -> ModelSpec:
        """The spec of a request's ``model`` (the default when it names none)."""
        spec = self.specs.get(model or self.default_model)
        if spec is None:
            raise NotFound(f"model {model!r} is not served here; this server serves "
                           f"{', '.join(repr(name) for name in self.specs)}", param="model", code="model_not_found")
        return spec

    @staticmethod
    def new_job_id() -> str:
        return f"video_{uuid.uuid4().hex}"

    async def create(self, request: GenerationRequest, options: PostProcessing,
                     webhook_url: str | None = None, tenant: Tenant = SHARED_TENANT,
                     metadata: dict | None = None) -> VideoObject:
        """Queue a validated request (its id from ``new_job_id``): durable before this returns.

        The queue bounds (all jobs, and this tenant's) are checked by the store in the same
        transaction as the insert, so concurrent creates never overshoot them.
        """
        spec = self.model_spec(request.model)
        job_id = request.request_id
        spec_of_job = JobSpec.of(request, options, webhook_url=webhook_url)
        now = time.time()
        image_path = None
        if request.image is not None:
            try:
                image_path = str(await asyncio.to_thread(self.artifacts.save_input_image, job_id, request.image))
            except StorageFull:
                raise _storage_full() from None
        record = JobRecord(
            id=job_id,
            model=spec.name,
            created_at=now,
            updated_at=now,
            params=spec_of_job.stored(),
            input_image_path=image_path,
            webhook_url=webhook_url,
            seed=request.seed,
            total_steps=request.num_inference_steps,
            # In the first write: a runner's claim copies it.
            metadata={**(metadata or {}), **_prompt_note(spec, request.prompt)},
            owner=tenant.owner,
        )
        # Per-key shares only where there are keys: without auth there is one tenant, the server.
        per_key = self.config.api.max_queued_per_key if self.config.api.api_keys_env and not tenant.is_admin else None
        admission = Admission(max_queued=self.config.jobs.max_queued, max_queued_per_owner=per_key)
        # Durable before the client learns the id: from here on the job is never lost.
        try:
            await asyncio.to_thread(self.store.create, record, admission)
        except OSError as error:  # SQLite's "database or disk is full" is an OperationalError, not this
            if image_path is not None:
                await asyncio.to_thread(self.artifacts.delete, job_id)
            if is_disk_full(error):
                raise _storage_full() from None
            raise
        except sqlite3.OperationalError as error:
            if image_path is not None:
                await asyncio.to_thread(self.artifacts.delete, job_id)
            if "full" in str(error):
                raise _storage_full() from None
            raise
        except QueueFull as full:
            if image_path is not None:
                await asyncio.to_thread(self.artifacts.delete, job_id)
            whose = "this API key has" if full.scope == "owner" else "the server has"
            raise Overloaded(f"{whose} {full.queued} jobs queued (limit {full.limit}); retry later",
                             retry_after_seconds=self.retry_after_seconds(full.queued - full.limit + 1),
                             code="rate_limit_exceeded") from None
        self.updates.publish(record)
        return await self.describe(record)

    def retry_after_seconds(self, jobs_to_drain: int) -> int:
        """When that many queued jobs will have started: from the recent job duration and how
        many jobs a replica runs at once (an estimate; clients retry with backoff anyway)."""
        mean = self.runner.mean_job_seconds if self.runner is not None else DEFAULT_JOB_SECONDS
        concurrency = self.config.jobs.max_concurrent_per_ingress
        return max(1, min(MAX_RETRY_AFTER_SECONDS, math.ceil(max(1, jobs_to_drain) * mean / concurrency)))

    async def get(self, job_id: str, tenant: Tenant = SHARED_TENANT) -> JobRecord:
        record = await asyncio.to_thread(self.store.get, job_id) if _looks_like_id(job_id) else None
        # Another tenant's video is answered exactly as an unknown one: its existence is not shown.
        if record is None or not tenant.sees(record):
            raise NotFound(f"no video with id {job_id!r}", param="video_id", code="not_found")
        return record

    async def describe(self, record: JobRecord) -> VideoObject:
        position = None
        if record.status is JobStatus.QUEUED:
            position = await asyncio.to_thread(self.store.queued_ahead, record.id)
        return video_object(record, position)

    async def list(self, after: str | None, limit: int, order: str,
                   tenant: Tenant = SHARED_TENANT) -> tuple[list[VideoObject], bool]:
        try:
            records, has_more = await asyncio.to_thread(self.store.list, after=after, limit=limit, order=order,
                                                        owner=tenant.listing_owner)
        except KeyError:
            raise NotFound(f"no video with id {after!r} to list after", param="after", code="not_found") from None
        return [video_object(record) for record in records], has_more

    async def delete(self, job_id: str, tenant: Tenant = SHARED_TENANT) -> None:
        record = await self.get(job_id, tenant)
        if record.status not in TERMINAL_STATUSES:
            # A running job stops at its next denoising step: its runner sees the flag.
            await asyncio.to_thread(self.store.update, job_id, cancel_requested=True)
            if self.runner is not None:
                self.runner.cancel_local(job_id)
            self.metrics.jobs_finished.labels("cancelled").inc()
        await asyncio.to_thread(self.store.delete, job_id)
        self.updates.publish_deleted(job_id)
        await asyncio.to_thread(self.artifacts.delete, job_id)

    async def content_path(self, job_id: str, variant: str, tenant: Tenant = SHARED_TENANT) -> Path:
        record = await self.get(job_id, tenant)
        if variant not in VARIANT_FILES:
            raise InvalidField(f"variant: must be one of {', '.join(VARIANT_FILES)} (got {variant!r})",
                               param="variant", code="invalid_value")
        if record.status is not JobStatus.COMPLETED:
            raise NotReady(f"video {job_id} is {record.status.value}; content is available once it is completed",
                           code="video_not_ready")
        path = record.artifacts.get(variant)
        if path is None or not Path(path).is_file():
            raise NotFound(f"video {job_id} has no {variant} content", param="variant", code="not_found")
        return Path(path)

    async def refresh_scraped_metrics(self) -> None:
        """Numbers that live outside this replica, read when Prometheus scrapes."""
        await asyncio.gather(self.refresh_cache_stats(), self.refresh_stage_replicas())

    async def refresh_stage_replicas(self) -> None:
        if self.stage_replicas is None:
            return
        try:
            running = await asyncio.wait_for(asyncio.to_thread(self.stage_replicas), timeout=SCRAPE_READ_TIMEOUT_S)
        except Exception as error:  # as with the caches: keep the last numbers rather than fail the scrape
            logger.warning("stage replica counts not refreshed: %s: %s", type(error).__name__, error)
            return
        self.metrics.set_stage_replicas(running)

    async def refresh_cache_stats(self) -> None:
        for name, cache in self.caches.items():
            try:
                self.metrics.cache_snapshot[name] = await asyncio.wait_for(cache.stats(), timeout=SCRAPE_READ_TIMEOUT_S)
            except Exception:  # a cache that cannot answer keeps its last numbers; requests never wait on it
                pass

    async def remix(self, video_id: str, prompt: str, tenant: Tenant = SHARED_TENANT) -> VideoObject:
        """Queue, through ``create``, a new job with a completed video's parameters, seed,
        post-processing, webhook and input image, under a new prompt (OpenAI's remix)."""
        source = await self.get(video_id, tenant)
        if source.status is not JobStatus.COMPLETED:
            raise NotReady(f"video {video_id} is {source.status.value}; only a completed video can be remixed",
                           code="video_not_ready")
        job = source.spec
        model = self.model_spec(job.model)
        raw = {**job.generation.model_dump(), "prompt": prompt}
        if source.input_image_path is not None:
            raw["image"] = await asyncio.to_thread(Path(source.input_image_path).read_bytes)
        try:
            request = validate_generation(raw, model, request_id=self.new_job_id())
        except RequestValidationError as error:
            first = error.errors[0]
            raise InvalidField(f"{first.field}: {first.message}", param=first.field, code="invalid_value") from None
        if job.post_processing.expand_prompt and not self.expander_enabled:
            raise InvalidField(f"video {video_id} asked for expand_prompt and this server has no prompt-expansion "
                               "model configured now", param="video_id", code="unsupported")
        return await self.create(request, job.post_processing, webhook_url=job.webhook_url,
                                 metadata={"remixed_from_video_id": source.id}, tenant=tenant)


def _storage_full() -> InsufficientStorage:
    logger.error("job refused: the server's storage is full")
    return InsufficientStorage("the server is out of storage space; nothing was kept, retry later",
                               retry_after_seconds=STORAGE_FULL_RETRY_AFTER_SECONDS)


def _looks_like_id(job_id: str) -> bool:
    return 0 < len(job_id) <= 128 and job_id.replace("_", "").replace("-", "").isalnum()


def _prompt_note(spec: ModelSpec, prompt: str) -> dict[str, str]:
    note = prompt_note(spec.prompt_grammar, prompt)
    return {} if note is None else {"prompt_note": note}
