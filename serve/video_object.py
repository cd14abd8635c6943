"""The video object a job is shown as: OpenAI's fields plus videoserve's extensions.

The API returns it and webhooks deliver it, so it lives beside the service, not in serve/api/."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from serve.jobs.store import JobRecord, JobStatus


class VideoError(BaseModel):
    code: str
    message: str


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


def video_object(record: JobRecord, queue_position: int | None = None) -> VideoObject:
    generation = record.spec.generation
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
    return VideoObject(
        id=record.id,
        model=record.model,
        status=api_status,
        progress=record.progress,
        created_at=int(record.created_at),
        completed_at=int(record.completed_at) if record.completed_at else None,
        seconds=f"{(generation.num_frames - 1) / generation.fps:g}",
        size=f"{generation.width}x{generation.height}",
        error=error,
        prompt=generation.prompt,
        stage=record.stage,
        step=record.step,
        total_steps=record.total_steps,
        queue_position=queue_position,
        eta_seconds=eta,
        seed=record.seed,
        cancelled=status is JobStatus.CANCELLED,
    )
