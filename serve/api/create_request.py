"""Reading POST /v1/videos: JSON or multipart, OpenAI's fields plus our extensions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, ValidationError

from engine.models.model_spec import ModelSpec
from engine.video_size import parse_size
from engine.request_validation import RequestValidationError, validate_generation
from engine.stage_types import GenerationRequest
from serve.api.errors import APIError
from engine.post_processing.frame_interpolation import check_interpolate_fps
from engine.post_processing.post_processor import PostProcessOptions
from serve.jobs.spec import PostProcessing

if TYPE_CHECKING:
    from serve.video_object import VideoObject
    from serve.video_service import VideoService

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


class CreateVideoFields(BaseModel):
    """The request body. Multipart sends every field as a string; pydantic parses "21" as 21."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str
    seconds: float | None = None
    size: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    num_frames: int | None = None
    fps: int | None = None
    flow_shift: float | None = None
    expand_prompt: bool = False
    interpolate_fps: int | None = None
    upscale: int | None = None
    webhook_url: str | None = None


async def read_create_body(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """The body's fields and the uploaded first frame (``input_reference``), size-limited."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json" and content_type not in FORM_TYPES:
        raise APIError(415, f"Content-Type must be application/json or multipart/form-data (got {content_type or 'none'})",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_bytes:
            raise _too_large(max_bytes)
    if content_type == "application/json":
        try:
            data = json.loads(body or b"null")
        except ValueError as error:
            raise APIError(400, f"body is not valid JSON: {error}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "body must be a JSON object", code="invalid_json")
        if "input_reference" in data:
            raise APIError(400, "send input_reference as a file in a multipart/form-data request",
                           param="input_reference", code="invalid_value")
        return data, None
    request._body = bytes(body)  # starlette parses the form from the cached body
    form = await request.form(max_part_size=max_bytes)
    fields: dict[str, Any] = {}
    image = None
    for key, value in form.multi_items():
        if key == "input_reference":
            if isinstance(value, str):
                raise APIError(400, "input_reference must be an uploaded image file", param="input_reference",
                               code="invalid_value")
            image = await value.read()
        elif not isinstance(value, str):
            raise APIError(400, f"{key} must be a plain form field, not a file", param=key, code="invalid_value")
        else:
            fields[key] = value
    return fields, image


def parse_create_fields(data: dict[str, Any]) -> CreateVideoFields:
    try:
        return CreateVideoFields.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = "is not a known field" if first["type"] == "extra_forbidden" else first["msg"]
        raise APIError(400, f"{param}: {message}", param=param, code="invalid_value") from None


def generation_request(fields: CreateVideoFields, image: bytes | None, spec: ModelSpec, request_id: str) -> GenerationRequest:
    """Translate the API's fields to the engine's and validate them against the model."""
    raw: dict[str, Any] = {"prompt": fields.prompt}
    for name in ("negative_prompt", "seed", "num_inference_steps", "guidance_scale", "guidance_scale_2", "num_frames",
                 "fps", "flow_shift"):
        value = getattr(fields, name)
        if value is not None:
            raw[name] = value
    renamed = {"image": "input_reference"}
    if fields.size is not None:
        try:
            raw["width"], raw["height"] = parse_size(fields.size)
        except ValueError as error:
            raise APIError(400, str(error), param="size", code="invalid_value") from None
        renamed |= {"width": "size", "height": "size"}
    if fields.seconds is not None and fields.num_frames is None:
        fps = fields.fps or spec.defaults.fps
        frames = fields.seconds * fps + 1
        if frames != int(frames) or fields.seconds <= 0:
            raise APIError(400, f"seconds: {fields.seconds:g} s at {fps} fps is not a whole number of frames",
                           param="seconds", code="invalid_value")
        raw["num_frames"] = int(frames)
        renamed["num_frames"] = "seconds"
    if image is not None:
        raw["image"] = image
    try:
        return validate_generation(raw, spec, request_id=request_id)
    except RequestValidationError as error:
        first = error.errors[0]
        param = renamed.get(first.field, first.field)
        label = first.field if param == first.field else f"{param} ({first.field})"
        raise APIError(400, f"{label}: {first.message}", param=param, code="invalid_value") from None


def check_options(fields: CreateVideoFields, request: GenerationRequest, expander_enabled: bool,
                  learned_upscale_factor: int | None = None) -> PostProcessing:
    if fields.expand_prompt and not expander_enabled:
        raise APIError(400, "expand_prompt: no prompt-expansion model is configured on this server",
                       param="expand_prompt", code="unsupported")
    # The limits live with the code that enforces them (engine/post_processing).
    try:
        if fields.interpolate_fps is not None:
            check_interpolate_fps(fields.interpolate_fps, request.fps)
        PostProcessOptions(interpolate_fps=fields.interpolate_fps, upscale=fields.upscale)
    except ValueError as error:
        param = str(error).split(":", 1)[0]
        raise APIError(400, str(error), param=param, code="invalid_value") from None
    if learned_upscale_factor and fields.upscale not in (None, 1, learned_upscale_factor):
        raise APIError(400, f"upscale: this server's learned upscaler is x{learned_upscale_factor} "
                            f"(got {fields.upscale})", param="upscale", code="invalid_value")
    if fields.webhook_url is not None:
        from serve.webhooks import validate_webhook_url

        try:
            validate_webhook_url(fields.webhook_url)
        except ValueError as error:
            raise APIError(400, str(error), param="webhook_url", code="invalid_value") from None
    return PostProcessing(
        expand_prompt=fields.expand_prompt,
        interpolate_fps=fields.interpolate_fps,
        upscale=fields.upscale if fields.upscale and fields.upscale > 1 else None,
    )


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body is larger than {max_bytes} bytes", code="request_too_large")


async def create_from_fields(service: VideoService, fields: CreateVideoFields, image: bytes | None) -> VideoObject:
    """The API's fields validated against the model they name, then queued by the service."""
    spec = service.model_spec(fields.model)
    request = generation_request(fields, image, spec, service.new_job_id())
    options = check_options(fields, request, service.expander_enabled, service.learned_upscale_factor)
    return await service.create(request, options, webhook_url=fields.webhook_url)
