"""The video object a job is shown as: OpenAI's fields plus videoserve's extensions.

The API returns it and webhooks deliver it, so it lives beside the service, not in serve/api/."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from engine.post_processing.post_processor import delivered_shape
from serve.jobs.store import JobRecord, JobStatus

if TYPE_CHECKING:
    from serve.jobs.spec import JobSpec


class VideoError(BaseModel):
    code: str
    message: str


class VideoQuality(BaseModel):
    flicker: float | None = None  # engine/quality/flicker.py: 0-255 levels, lower is steadier


class StepCacheReport(BaseModel):
    policy: str
    threshold: float
    reused_steps: int | None = None  # steps whose conditional row skipped the later blocks (once completed)
    total_steps: int | None = None


class VideoObject(BaseModel):
    id: str
    object: Literal["video"] = "video"
    model: str
    status: Literal["queued", "in_progress", "completed", "failed"]
    progress: int
    created_at: int
    completed_at: int | None = None
    expires_at: int | None = None
    seconds: str
    size: str
    error: VideoError | None = None
    remixed_from_video_id: str | None = None
    prompt: str | None = None
    # videoserve extensions
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    queue_position: int | None = None
    eta_seconds: float | None = None
    seed: int | None = None
    cancelled: bool = False
    quality: VideoQuality | None = None  # measured on every completed video
    step_cache: StepCacheReport | None = None  # the lossy step caching this job asked for, and what it reused
    prompt_note: str | None = None  # what the model says of the prompt (the toy model: outside its grammar)


def video_object(record: JobRecord, queue_position: int | None = None) -> VideoObject:
    job = record.spec
    generation = job.generation
    status = record.status
    # OpenAI has no 'cancelled' status: a cancelled job reads as failed with that code.
    api_status = "failed" if status is JobStatus.CANCELLED else status.value
    error = None
    if status is JobStatus.FAILED:
        error = VideoError(code=record.error_code or "generation_failed", message=record.error_message or "failed")
    elif status is JobStatus.CANCELLED:
        error = VideoError(code="cancelled", message="the job was cancelled")
    eta = None
    step_seconds = record.metadata.get("step_seconds")
    if status is JobStatus.IN_PROGRESS and step_seconds and record.total_steps is not None:
        eta = round(step_seconds * (record.total_steps - (record.step or 0)), 2)
    num_frames, width, height, fps = _delivered_shape(record, job)
    return VideoObject(
        id=record.id,
        model=record.model,
        status=api_status,
        progress=record.progress,
        created_at=int(record.created_at),
        completed_at=int(record.completed_at) if record.completed_at else None,
        expires_at=int(record.expires_at) if record.expires_at else None,
        # The delivered clip's; the duration as the request's ``seconds`` reads it, (frames - 1) / fps.
        seconds=f"{(num_frames - 1) / fps:g}",
        size=f"{width}x{height}",
        error=error,
        remixed_from_video_id=record.metadata.get("remixed_from_video_id"),
        prompt=generation.prompt,
        stage=record.stage,
        step=record.step,
        total_steps=record.total_steps,
        queue_position=queue_position,
        eta_seconds=eta,
        seed=record.seed,
        cancelled=status is JobStatus.CANCELLED,
        quality=VideoQuality(**record.metadata["quality"]) if isinstance(record.metadata.get("quality"), dict) else None,
        prompt_note=record.metadata.get("prompt_note"),
        step_cache=_step_cache_report(record, job),
    )


def _step_cache_report(record: JobRecord, job: JobSpec) -> StepCacheReport | None:
    asked = job.generation.step_cache
    if asked is None:
        return None
    reported = record.metadata.get("step_cache")
    if isinstance(reported, dict):
        return StepCacheReport(**reported)
    return StepCacheReport(policy=asked.policy, threshold=asked.threshold, total_steps=job.generation.num_inference_steps)


def _delivered_shape(record: JobRecord, job: JobSpec) -> tuple[int, int, int, int]:
    """(frames, width, height, fps) of the clip the client downloads: after interpolation and upscaling.

    A completed job's are what its post-processor wrote; before that, what it will write."""
    written = [record.metadata.get(name) for name in ("num_frames", "width", "height", "fps")]
    if record.status is JobStatus.COMPLETED and all(isinstance(value, int) and value > 0 for value in written):
        return tuple(written)
    generation, options = job.generation, job.post_processing
    return delivered_shape(generation.num_frames, generation.width, generation.height, generation.fps,
                           interpolate_fps=options.interpolate_fps, upscale=options.upscale)
