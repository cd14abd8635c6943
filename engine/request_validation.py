"""Request validation, in one place, against the model's own limits.

A bad value raises RequestValidationError naming the field and the allowed range.
Nothing is rounded or clamped: a width of 840 is refused, not turned into 832.
"""

from __future__ import annotations

import io
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from engine.models.model_spec import ModelSpec
from engine.stage_types import GenerationRequest
from engine.step_cache.options import StepCacheError, StepCacheOptions, parse_step_cache

MAX_SEED = 2**63 - 1
MAX_FLOW_SHIFT = 20.0
MAX_FPS = 60
ACCEPTED_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class RequestValidationError(ValueError):
    """One or more request fields are invalid; ``errors`` names each of them."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("; ".join(f"{error.field}: {error.message}" for error in errors))

    @property
    def field(self) -> str:
        return self.errors[0].field


class GenerationParams(BaseModel):
    """The user-facing request fields. Leaving a field out means 'the model's default'.

    Validate with ``context={"spec": ModelSpec}``: limits depend on the model.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    negative_prompt: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    num_frames: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    guidance_scale_2: float | None = None
    flow_shift: float | None = None
    seed: int | None = None
    fps: int | None = None
    # true, false, or {"policy": ..., "threshold": ...}: read by parse_step_cache (engine/step_cache).
    step_cache: Any = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str, info: ValidationInfo) -> str:
        limit = _spec(info).limits.max_prompt_chars
        if not value.strip():
            raise ValueError("must not be empty")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(value)})")
        return value

    @field_validator("negative_prompt")
    @classmethod
    def _negative_prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _spec(info).limits.max_prompt_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"must be at most {limit} characters (got {len(value)})")
        return value

    @field_validator("width", "height")
    @classmethod
    def _size(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _spec(info).limits
        if value is None:
            return value
        too_big = limits.max_size is not None and value > limits.max_size
        if value < limits.min_size or too_big or value % limits.size_multiple:
            upper = f" and at most {limits.max_size}" if limits.max_size is not None else ""
            raise ValueError(
                f"must be a multiple of {limits.size_multiple} ({limits.size_rule}), at least {limits.min_size}"
                f"{upper} (got {value})"
            )
        return value

    @field_validator("num_frames")
    @classmethod
    def _num_frames(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _spec(info).limits
        step = limits.frame_step
        if value is None:
            return value
        too_many = limits.max_frames is not None and value > limits.max_frames
        if value < 1 or too_many or (value - 1) % step:
            upper = f" up to {limits.max_frames}" if limits.max_frames is not None else ""
            raise ValueError(
                f"must be {step}k+1 (the VAE compresses time {step}x): 1, {step + 1}, {2 * step + 1}, ...{upper} "
                f"(got {value})"
            )
        return value

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = _spec(info).limits.max_steps
        if value is not None and not 1 <= value <= limit:
            raise ValueError(f"must be between 1 and {limit} (got {value})")
        return value

    @field_validator("guidance_scale", "guidance_scale_2")
    @classmethod
    def _guidance(cls, value: float | None, info: ValidationInfo) -> float | None:
        spec = _spec(info)
        limit = spec.limits.max_guidance_scale
        if value is not None and info.field_name == "guidance_scale_2" and spec.experts == 1:
            raise ValueError(f"is not accepted: {spec.name} has one expert (guidance_scale_2 is the low-noise "
                             "expert's guidance on two-expert models such as Wan 2.2 A14B)")
        if value is not None and not 0.0 <= value <= limit:
            raise ValueError(f"must be between 0 and {limit} (got {value})")
        return value

    @field_validator("flow_shift")
    @classmethod
    def _flow_shift(cls, value: float | None, info: ValidationInfo) -> float | None:
        spec = _spec(info)
        if value is not None and spec.defaults.flow_shift is None:
            raise ValueError(f"is not accepted: {spec.name}'s scheduler derives its shift from the video's size")
        if value is not None and not 0.0 < value <= MAX_FLOW_SHIFT:
            raise ValueError(f"must be greater than 0 and at most {MAX_FLOW_SHIFT} (got {value})")
        return value

    @field_validator("seed")
    @classmethod
    def _seed(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= MAX_SEED:
            raise ValueError(f"must be between 0 and {MAX_SEED} (got {value})")
        return value

    @field_validator("fps")
    @classmethod
    def _fps(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= MAX_FPS:
            raise ValueError(f"must be between 1 and {MAX_FPS} (got {value})")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: bytes | None, info: ValidationInfo) -> bytes | None:
        if value is not None:
            check_image_bytes(value, _spec(info))
        return value

    @model_validator(mode="after")
    def _image_matches_task(self, info: ValidationInfo) -> GenerationParams:
        spec = _spec(info)
        if spec.needs_image and self.image is None:
            raise _field_error("image", f"is required: {spec.name} is an image-to-video model")
        if not spec.is_image_to_video and self.image is not None:
            raise _field_error("image", f"is not accepted: {spec.name} is a text-to-video model")
        return self


def check_image_bytes(data: bytes, spec: ModelSpec) -> None:
    """Refuse images that are too big, of another format, or that do not decode."""
    from PIL import Image

    limits = spec.limits
    if len(data) > limits.max_image_bytes:
        raise ValueError(f"must be at most {limits.max_image_bytes} bytes (got {len(data)})")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as error:
        raise ValueError(f"is too large to decode ({error})") from None
    except Exception as error:  # whatever a decoder makes of garbage: OSError, SyntaxError, struct.error, ...
        raise ValueError(f"is not a decodable image ({error})") from None
    with image:
        # Format and size from the header first: a huge image is refused before it is decoded.
        width, height = image.size
        if image.format not in ACCEPTED_IMAGE_FORMATS:
            raise ValueError(f"must be one of {', '.join(ACCEPTED_IMAGE_FORMATS)} (got {image.format})")
        if min(width, height) < 16 or max(width, height) > limits.max_image_side:
            raise ValueError(f"sides must be between 16 and {limits.max_image_side} pixels (got {width}x{height})")
        try:
            image.load()  # decodes the whole file: catches truncated data
        except Exception as error:
            raise ValueError(f"is not a decodable image ({error})") from None


def validate_generation(raw: dict[str, Any], spec: ModelSpec, request_id: str | None = None,
                        step_cache_default: StepCacheOptions | None = None) -> GenerationRequest:
    """Validate user input against ``spec`` and fill in the model's defaults (``step_cache_default``:
    the app's, for a request that does not say)."""
    try:
        params = GenerationParams.model_validate(raw, context={"spec": spec})
    except ValidationError as error:
        raise RequestValidationError([_field_error_from_pydantic(item) for item in error.errors()]) from None
    try:
        step_cache = parse_step_cache(params.step_cache, step_cache_default)
    except StepCacheError as error:
        raise RequestValidationError([FieldError(error.field, error.message)]) from None
    defaults = spec.defaults
    guidance_scale = _pick(params.guidance_scale, defaults.guidance_scale)
    guidance_scale_2 = None
    if spec.experts == 2:
        # As diffusers: the low-noise expert takes guidance_scale unless told otherwise (here,
        # the model's own default for it comes first).
        guidance_scale_2 = _pick(params.guidance_scale_2, _pick(defaults.guidance_scale_2, guidance_scale))
    return GenerationRequest(
        request_id=request_id or uuid.uuid4().hex,
        model=spec.name,
        task=spec.task_for(params.image is not None),
        prompt=params.prompt,
        negative_prompt=defaults.negative_prompt if params.negative_prompt is None else params.negative_prompt,
        width=_pick(params.width, defaults.width),
        height=_pick(params.height, defaults.height),
        num_frames=_pick(params.num_frames, defaults.num_frames),
        num_inference_steps=_pick(params.num_inference_steps, defaults.num_inference_steps),
        guidance_scale=guidance_scale,
        guidance_scale_2=guidance_scale_2,
        flow_shift=_pick(params.flow_shift, defaults.flow_shift),
        # A request without a seed gets a random one, recorded so the video can be reproduced.
        seed=secrets.randbelow(MAX_SEED + 1) if params.seed is None else params.seed,
        fps=_pick(params.fps, defaults.fps),
        image=params.image,
        step_cache=step_cache,
    )


def _pick(value, default):
    return default if value is None else value


def _spec(info: ValidationInfo) -> ModelSpec:
    if not info.context or "spec" not in info.context:
        raise RuntimeError("GenerationParams must be validated with context={'spec': ModelSpec}")
    return info.context["spec"]


class _FieldValueError(ValueError):
    """Raised by cross-field checks, which pydantic would otherwise file under no field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


_field_error = _FieldValueError


def _field_error_from_pydantic(item: dict) -> FieldError:
    context_error = (item.get("ctx") or {}).get("error")
    if isinstance(context_error, _FieldValueError):
        return FieldError(context_error.field, str(context_error))
    field = ".".join(str(part) for part in item["loc"]) or "request"
    if item["type"] == "extra_forbidden":
        return FieldError(field, "is not a known field")
    if item["type"] == "missing":
        return FieldError(field, "is required")
    message = str(context_error) if isinstance(context_error, ValueError) else item["msg"]
    return FieldError(field, message)
