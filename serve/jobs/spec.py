"""What a job is, typed across the durable boundary: built once at the edge, stored, given back.

The API validates a request into the engine's ``GenerationRequest`` and the
post-processing options; ``JobSpec.of`` freezes both (with the webhook and the owner) into
the one value the store keeps and the runner reads. Nothing downstream re-validates or
rebuilds it field by field. Records written before the spec was typed (version 0: a
loose ``{"engine": ..., "options": ...}`` dict) still load: ``JobSpec.from_stored`` reads
both shapes.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.models.model_spec import Task

if TYPE_CHECKING:  # the store reads specs without loading torch
    from engine.stage_types import GenerationRequest

JOB_SPEC_VERSION = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepCache(_Frozen):
    policy: str
    threshold: float
    warmup_steps: int = 2


class GenerationParams(_Frozen):
    """The validated generation parameters, every default filled in (engine/request_validation.py)."""

    prompt: str
    negative_prompt: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    num_frames: int = Field(gt=0)
    num_inference_steps: int = Field(gt=0)
    guidance_scale: float
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int
    fps: int = Field(gt=0)
    step_cache: StepCache | None = None  # None: lossless


class PostProcessing(_Frozen):
    """What runs after the model: prompt expansion before it, interpolation and upscaling after."""

    expand_prompt: bool = False
    interpolate_fps: int | None = None
    upscale: int | None = None  # None: no upscaling (a factor of 1 is stored as None)


class JobSpec(_Frozen):
    version: Literal[1] = JOB_SPEC_VERSION
    model: str = Field(min_length=1)
    task: Task
    generation: GenerationParams
    post_processing: PostProcessing = PostProcessing()
    webhook_url: str | None = None
    # Who created the job (a digest of the API key); the ownership checks are issue 13's.
    owner: str | None = None

    @classmethod
    def of(cls, request: GenerationRequest, post_processing: PostProcessing, webhook_url: str | None = None,
           owner: str | None = None) -> JobSpec:
        values = {name: getattr(request, name) for name in GenerationParams.model_fields}
        if request.step_cache is not None:
            values["step_cache"] = StepCache(**dataclasses.asdict(request.step_cache))
        generation = GenerationParams(**values)
        return cls(model=request.model, task=request.task, generation=generation, post_processing=post_processing,
                   webhook_url=webhook_url, owner=owner)

    def generation_request(self, job_id: str, image: bytes | None = None) -> GenerationRequest:
        """The engine's request for this job; ``image`` only for the stage that reads it."""
        from engine.stage_types import GenerationRequest
        from engine.step_cache.options import StepCacheOptions

        values = self.generation.model_dump()
        if values["step_cache"] is not None:
            values["step_cache"] = StepCacheOptions(**values["step_cache"])
        return GenerationRequest(request_id=job_id, model=self.model, task=self.task, image=image, **values)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_stored(cls, stored: dict[str, Any], model: str, has_image: bool, webhook_url: str | None) -> JobSpec:
        """A spec from a record's ``params``: this version's, or the untyped dict of version 0."""
        if "version" in stored:
            return cls.model_validate(stored)
        engine, options = stored["engine"], stored.get("options", {})
        return cls(
            model=model,
            task=Task.IMAGE_TO_VIDEO if has_image else Task.TEXT_TO_VIDEO,
            generation=GenerationParams.model_validate(engine),
            post_processing=PostProcessing.model_validate({k: v for k, v in options.items() if v is not None}),
            webhook_url=webhook_url,
        )
