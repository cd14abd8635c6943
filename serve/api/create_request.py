"""Reading POST /v1/videos: JSON or multipart, OpenAI's fields plus our extensions."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect

from engine.models.model_spec import ModelSpec
from engine.video_size import parse_size
from engine.request_validation import MAX_FLOW_SHIFT, MAX_FPS, MAX_SEED, RequestValidationError, validate_generation
from engine.stage_types import GenerationRequest
from engine.step_cache.options import MAX_THRESHOLD, POLICIES, StepCacheOptions
from serve.api.errors import APIError
from serve.api.input_image import check_image_header, image_from_data_url
from engine.post_processing.frame_interpolation import MAX_INTERPOLATE_FPS, check_interpolate_fps
from engine.post_processing.post_processor import PostProcessOptions, delivered_shape
from engine.post_processing.upscaling import LANCZOS_FACTORS
from serve.jobs.spec import PostProcessing
from serve.tenant import SHARED_TENANT, Tenant

if TYPE_CHECKING:
    from serve.video_object import VideoObject
    from serve.video_service import VideoService

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
ACCEPTED_TYPES = ("application/json", *FORM_TYPES)
# The body is one object of scalars (and input_reference's one level below): anything this deep is not a request.
MAX_JSON_DEPTH = 64
# A JSON number literal longer than this is out of every field's range (and int() of a huge one is slow).
MAX_NUMBER_CHARS = 1000
# Bounds that hold for every model; each model's own limits are checked by engine.request_validation.
MAX_SECONDS = 600
MAX_NUM_FRAMES = 10_000
MAX_STEPS = 1000
MAX_GUIDANCE_SCALE = 100.0
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


class ImageReference(BaseModel):
    """OpenAI's reference object: ``{"image_url": "data:image/png;base64,..."}``."""

    model_config = ConfigDict(extra="forbid")

    image_url: str | None = Field(None, description="A base64 data: URL (image/png, image/jpeg or image/webp); "
                                                     "other URLs are refused, never fetched.")
    file_id: str | None = Field(None, description="Refused: this server stores no files.")


class FormFields(dict):
    """Fields read from a form: every value a string, so parsed leniently ("21" -> 21); JSON's are typed."""


class CreateVideoFields(BaseModel):
    """The request body. JSON values must have their field's type (no "21" or true for an integer);
    a form sends every field as a string, and "21" is read as 21. ``seconds`` may be a string in
    both, as OpenAI's SDK sends it ("4")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str | None = Field(None, max_length=256)
    prompt: str
    seconds: float | None = Field(
        None, gt=0, le=MAX_SECONDS,
        json_schema_extra={"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": MAX_SECONDS},
                                     {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "maxLength": 32},
                                     {"type": "null"}]},
    )
    size: str | None = Field(None, max_length=32)
    negative_prompt: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE)
    guidance_scale_2: float | None = Field(None, ge=0, le=MAX_GUIDANCE_SCALE)
    num_frames: int | None = Field(None, ge=1, le=MAX_NUM_FRAMES)
    fps: int | None = Field(None, ge=1, le=MAX_FPS)
    flow_shift: float | None = Field(None, gt=0, le=MAX_FLOW_SHIFT)
    expand_prompt: bool = False
    interpolate_fps: int | None = Field(None, ge=1, le=MAX_INTERPOLATE_FPS)
    upscale: int | None = Field(None, ge=1, le=max(LANCZOS_FACTORS))
    input_reference: ImageReference | None = None
    webhook_url: str | None = None
    # Checked by the engine (engine/step_cache/options.py), whose errors name the part at fault
    # (step_cache.policy, step_cache.threshold); the schema below documents it.
    step_cache: Any = Field(
        None, description="Step caching (lossy, faster): true for the default policy, false for none, or "
                          "{\"policy\", \"threshold\"}; default: the server's (denoiser.step_cache).",
        json_schema_extra={"anyOf": [
            {"type": "boolean"},
            {"type": "object", "additionalProperties": False, "properties": {
                "policy": {"type": "string", "enum": list(POLICIES)},
                "threshold": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_THRESHOLD}}},
            {"type": "null"}]},
    )

    @field_validator("step_cache", mode="before")
    @classmethod
    def _step_cache_as_sent(cls, value: Any) -> Any:
        # A form carries the object as JSON text ('{"policy": "taylorseer"}'), true and false as text.
        if isinstance(value, str):
            if value.lstrip().startswith("{"):
                return parse_json_object(value.encode("utf-8"), what="step_cache", param="step_cache")
            return {"true": True, "false": False}.get(value.strip().lower(), value)
        return value

    @field_validator("seconds", mode="before")
    @classmethod
    def _seconds_as_sent(cls, value: Any) -> Any:
        if isinstance(value, str):  # OpenAI's SDK sends "4", in a form as in JSON
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"must be a number of seconds such as 4 or \"4\" (got {value[:32]!r})") from None
        return value


async def read_create_body(request: Request, max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """The body's fields and the uploaded first frame (``input_reference``), size-limited.

    A form's fields come back as FormFields (strings, parsed leniently); a JSON body's as a dict.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        raise APIError(415, f"Content-Type must be one of {', '.join(ACCEPTED_TYPES)} "
                            f"(got {content_type[:100] or 'none'})",
                       code="unsupported_media_type")
    body = await _read_body(request, max_bytes)
    if content_type == "application/json":
        data = await asyncio.to_thread(parse_json_object, bytes(body))  # a 25 MB body takes a while to parse
        return data, None
    request._body = bytes(body)  # starlette parses the form from the cached body
    try:
        form = await request.form(max_part_size=max_bytes)
    except Exception as error:  # starlette's 400 for a bad boundary, or whatever the parser raises on garbage
        detail = getattr(error, "detail", None) or f"{type(error).__name__}: {error}"
        raise APIError(400, f"body is not valid {content_type}: {detail}", code="invalid_form") from None
    try:
        return await _form_fields(form)
    finally:
        await form.close()


async def _read_body(request: Request, max_bytes: int) -> bytearray:
    """The whole body, refused past ``max_bytes`` as it streams in (a chunked body declares no length)."""
    declared = request.headers.get("content-length")
    if declared is not None and not _CONTENT_LENGTH.fullmatch(declared.strip()):
        raise APIError(400, "Content-Length must be a number of bytes", code="invalid_content_length")
    if declared is not None and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise _too_large(max_bytes)
    except ClientDisconnect:
        raise APIError(400, "the client closed the connection before the body ended", code="incomplete_body") from None
    if declared is not None and len(body) != int(declared):
        raise APIError(400, f"the body has {len(body)} bytes but Content-Length says {int(declared)}",
                       code="invalid_content_length")
    return body


def parse_json_object(body: bytes, what: str = "body", param: str | None = None) -> dict[str, Any]:
    """``body`` as a JSON object, strictly: no NaN or Infinity, no number out of a double's range, no lone
    surrogate in a string, at most MAX_JSON_DEPTH levels deep."""
    try:
        data = json.loads(body or b"null", parse_constant=_refuse_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
        if not isinstance(data, dict):
            raise ValueError("must be a JSON object")
        _check_json_tree(data)
    except RecursionError:
        raise _invalid_json(what, f"nested more than {MAX_JSON_DEPTH} levels deep", param) from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, and the checks' refusals
        raise _invalid_json(what, str(error), param) from None
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text) if len(text) <= MAX_NUMBER_CHARS else float("inf")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:32]}{'...' if len(text) > 32 else ''} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"an integer of {len(text)} digits is out of range")
    return int(text)


def _check_json_tree(data: dict[str, Any]) -> None:
    """Depth and text of every node, iteratively (a recursive walk is what the depth bound is for)."""
    pending: list[tuple[Any, int]] = [(data, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise RecursionError
        if isinstance(node, dict):
            for key in node:
                _check_text(key)
        for value in node.values() if isinstance(node, dict) else node:
            if isinstance(value, (dict, list)):
                pending.append((value, depth + 1))
            elif isinstance(value, str):
                _check_text(value)


def _check_text(text: str) -> None:
    # json.loads takes "\ud800" alone; it cannot be stored or sent back as UTF-8.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None


def _invalid_json(what: str, problem: str, param: str | None) -> APIError:
    return APIError(400, f"{what} is not valid JSON: {problem}", param=param, code="invalid_json")


async def _form_fields(form) -> tuple[FormFields, bytes | None]:
    """A form's fields; ``input_reference`` as an uploaded file, as JSON text holding {"image_url": ...}, or
    as ``input_reference[image_url]`` (how OpenAI's SDK encodes that object in a form)."""
    fields = FormFields()
    reference: dict[str, str] = {}
    image = None
    for key, value in form.multi_items():
        part = re.fullmatch(r"input_reference\[([^\]]*)\]", key)
        if not isinstance(value, str):
            if key != "input_reference":
                raise APIError(400, f"{key}: must be a plain form field, not a file", param=key, code="invalid_value")
            if image is not None:
                raise _given_twice(key)
            image = await value.read()
        elif part:
            if part.group(1) in reference:
                raise _given_twice(key)
            reference[part.group(1)] = value
        else:
            if key in fields:
                raise _given_twice(key)
            fields[key] = _reference_from_text(value) if key == "input_reference" else value
    if (image is not None) + bool(reference) + ("input_reference" in fields) > 1:
        raise APIError(400, "input_reference: given more than once (send a file, JSON text or "
                            "input_reference[image_url], one of them)", param="input_reference", code="invalid_value")
    if reference:
        fields["input_reference"] = reference
    return fields, image


def _reference_from_text(text: str) -> dict[str, Any]:
    if not text.lstrip().startswith("{"):
        raise APIError(400, 'input_reference: send an image file, {"image_url": "data:image/png;base64,..."} as '
                            "JSON text, or input_reference[image_url]=data:image/png;base64,...",
                       param="input_reference", code="invalid_value")
    return parse_json_object(text.encode("utf-8"), what="input_reference", param="input_reference")


def _given_twice(key: str) -> APIError:
    return APIError(400, f"{key}: given more than once", param=key, code="invalid_value")


def parse_create_fields(data: dict[str, Any]) -> CreateVideoFields:
    """The body's fields validated: strictly typed from JSON, leniently from a form (FormFields)."""
    try:
        return CreateVideoFields.model_validate(data, strict=not isinstance(data, FormFields))
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        context_error = (first.get("ctx") or {}).get("error")
        if first["type"] == "extra_forbidden":
            message = "is not a known field"
        elif isinstance(context_error, ValueError):
            message = str(context_error)
        else:
            message = first["msg"]
        raise APIError(400, f"{param}: {message}", param=param, code="invalid_value") from None


def create_video_request_body() -> dict[str, Any]:
    """POST /v1/videos's OpenAPI requestBody: the route reads its body by hand, so FastAPI infers none."""
    schema = _inlined(CreateVideoFields.model_json_schema())
    form = copy.deepcopy(schema)
    form["properties"]["input_reference"] = {
        "description": "The first frame, uploaded as a file (PNG, JPEG or WEBP); or, as OpenAI's SDK sends the "
                       "reference object, input_reference[image_url]=data:image/png;base64,...",
        "type": "string", "format": "binary",
    }
    urlencoded = copy.deepcopy(form)
    del urlencoded["properties"]["input_reference"]
    return {"required": True, "content": {"application/json": {"schema": schema},
                                          "multipart/form-data": {"schema": form},
                                          "application/x-www-form-urlencoded": {"schema": urlencoded}}}


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` written in place (in an OpenAPI document "#/$defs/..." points nowhere)."""
    definitions = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/$defs/"):
                target = copy.deepcopy(definitions[node["$ref"].removeprefix("#/$defs/")])
                return inline(target | {key: value for key, value in node.items() if key != "$ref"})
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


def generation_request(fields: CreateVideoFields, image: bytes | None, spec: ModelSpec, request_id: str,
                       step_cache_default: StepCacheOptions | None = None) -> GenerationRequest:
    """Translate the API's fields to the engine's and validate them against the model."""
    raw: dict[str, Any] = {"prompt": fields.prompt}
    if fields.step_cache is not None:
        raw["step_cache"] = fields.step_cache
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
        frames = fields.seconds * fps  # beyond the first; tested before the + 1, which would round 1e-300 away
        if frames != int(frames) or fields.seconds <= 0:
            raise APIError(400, f"seconds: {fields.seconds:g} s at {fps} fps is not a whole number of frames",
                           param="seconds", code="invalid_value")
        raw["num_frames"] = int(frames) + 1
        renamed["num_frames"] = "seconds"
    if image is not None:
        raw["image"] = image
    try:
        return validate_generation(raw, spec, request_id=request_id, step_cache_default=step_cache_default)
    except RequestValidationError as error:
        first = error.errors[0]
        param = renamed.get(first.field, first.field)
        label = first.field if param == first.field else f"{param} ({first.field})"
        raise APIError(400, f"{label}: {first.message}", param=param, code="invalid_value") from None


def check_options(fields: CreateVideoFields, request: GenerationRequest, expander_enabled: bool,
                  learned_upscale_factor: int | None = None,
                  max_output_pixel_frames: int | None = None) -> PostProcessing:
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
    if max_output_pixel_frames is not None:
        check_output_work(fields, request, max_output_pixel_frames)
    return PostProcessing(
        expand_prompt=fields.expand_prompt,
        interpolate_fps=fields.interpolate_fps,
        upscale=fields.upscale if fields.upscale and fields.upscale > 1 else None,
    )


def check_output_work(fields: CreateVideoFields, request: GenerationRequest, limit: int) -> None:
    """Refuse a video whose delivered pixels x frames (after interpolation and upscaling) exceed ``limit``,
    naming the field that most multiplies the work."""
    frames, width, height, _ = delivered_shape(request.num_frames, request.width, request.height, request.fps,
                                               interpolate_fps=fields.interpolate_fps, upscale=fields.upscale)
    work = frames * width * height
    if work <= limit:
        return
    # Each post-processing option multiplies the decoded video's work: blame the one whose removal
    # brings it under the limit (the biggest first), else the biggest, else the video itself.
    factors = sorted(((frames / request.num_frames, "interpolate_fps"), ((fields.upscale or 1) ** 2, "upscale")),
                     reverse=True)
    param = next((name for factor, name in factors if factor > 1 and work / factor <= limit), None)
    if param is None:
        if request.num_frames * request.width * request.height <= limit:
            param = factors[0][1]
        elif fields.num_frames is None and fields.seconds is not None:
            param = "seconds"
        elif fields.num_frames is not None and fields.size is None:
            param = "num_frames"
        else:
            param = "size"
    raise APIError(400, f"{param}: the video would be {width}x{height} x {frames} frames = {work:,} pixel-frames "
                        f"after post-processing, over this server's limit of {limit:,} (api.max_output_pixel_frames)",
                   param=param, code="output_too_large")


def _validated_request(fields: CreateVideoFields, upload: bytes | None, spec: ModelSpec, request_id: str,
                       max_image_pixels: int, step_cache_default: StepCacheOptions | None = None) -> GenerationRequest:
    """generation_request with the first frame taken from wherever the body put it. It decodes the
    image: run it off the event loop."""
    image = upload
    reference = fields.input_reference
    if reference is not None:
        if reference.file_id is not None:
            raise APIError(400, "input_reference.file_id: this server stores no files; send the image as a data: "
                                "URL (image_url) or upload it", param="input_reference", code="unsupported")
        if reference.image_url is None:
            raise APIError(400, "input_reference: give image_url (a data: URL)", param="input_reference",
                           code="invalid_value")
        image = image_from_data_url(reference.image_url)
    if image is not None:
        check_image_header(image, max_image_pixels)
    return generation_request(fields, image, spec, request_id, step_cache_default)


async def _validated_off_loop(fields: CreateVideoFields, upload: bytes | None, spec: ModelSpec, request_id: str,
                              max_image_pixels: int, step_cache_default: StepCacheOptions | None = None
                              ) -> GenerationRequest:
    # Decoding a 20 MB image takes a while: not on the event loop every request shares.
    return await asyncio.to_thread(_validated_request, fields, upload, spec, request_id, max_image_pixels,
                                   step_cache_default)


def _too_large(max_bytes: int) -> APIError:
    return APIError(413, f"request body is larger than {max_bytes} bytes", code="request_too_large")


async def create_from_fields(service: VideoService, fields: CreateVideoFields, image: bytes | None,
                             tenant: Tenant = SHARED_TENANT) -> VideoObject:
    """The API's fields validated against the model they name, then queued by the service for ``tenant``."""
    spec = service.model_spec(fields.model)
    request = await _validated_off_loop(fields, image, spec, service.new_job_id(),
                                        service.config.api.max_input_image_pixels,
                                        service.config.denoiser.default_step_cache())
    options = check_options(fields, request, service.expander_enabled, service.learned_upscale_factor,
                            service.config.api.max_output_pixel_frames)
    if fields.webhook_url is not None:
        import asyncio

        from serve.webhook_targets import TargetPolicy, check_webhook_target

        # Resolves the host (blocking DNS), so off the event loop; the sender checks again per attempt.
        policy = TargetPolicy(service.config.webhooks.allow_private_targets)
        try:
            await asyncio.to_thread(check_webhook_target, fields.webhook_url, policy)
        except ValueError as error:
            raise APIError(400, str(error), param="webhook_url", code="invalid_value") from None
    return await service.create(request, options, webhook_url=fields.webhook_url, tenant=tenant)
