"""Synthetic load-test workloads: what each request asks for, and when it arrives.

The same ``(mix, count, seed)`` always gives the same requests, byte for byte, so the
load generator and the diffusers baseline can be handed exactly the same work.

    {"sizes": {"128x128": 0.7, "96x96": 0.3}, "i2v_fraction": 0.0,
     "repeated_prompt_fraction": 0.5, "prompt_pool_size": 4, "num_frames": [17],
     "steps": [10], "guidance_scales": [5.0], "image_pool_size": 3}

is a mix file (``WorkloadMix``); every field may be left out to take its default.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.video_size import parse_size

# Separate seed streams, so arrival gaps and request contents drawn from one user seed
# are independent of each other.
_WORKLOAD_STREAM = 0
_ARRIVAL_STREAM = 1
_IMAGE_STREAM = 2

# Words the bench/tiny presets' tokenizer knows as whole pieces, so prompts tokenize to
# realistic lengths instead of character soup.
_SUBJECTS = ("a red car", "a cat", "a dog", "a man", "a woman", "a robot", "a bird", "a blue fish")
_ACTIONS = ("walks", "runs", "flies", "drives")
_PLACES = (
    "in the city street at night",
    "on the sea in the sun",
    "in the forest in the rain",
    "on the mountain in the snow",
    "at the river with the moon",
    "in space with a star",
)
_SHOTS = ("slow motion", "close up", "wide shot", "camera tracking")


class WorkloadMix(BaseModel):
    """What a workload is made of. Fractions are probabilities per request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: dict[str, float] = Field(default_factory=lambda: {"128x128": 0.7, "96x96": 0.3},
                                    description="'WxH' -> relative weight.")
    i2v_fraction: float = Field(0.0, description="Share of image-to-video requests (needs an I2V model).")
    repeated_prompt_fraction: float = Field(0.5, description="Share of prompts drawn from a small shared pool.")
    prompt_pool_size: int = Field(4, description="Distinct prompts in the shared pool.")
    num_frames: tuple[int, ...] = (17,)
    steps: tuple[int, ...] = (10,)
    guidance_scales: tuple[float, ...] = (5.0,)
    negative_prompt: str | None = Field(None, description="None: the server's (Wan's) default negative prompt.")
    image_pool_size: int = Field(3, description="Distinct first-frame images per size, reused across requests.")
    prompt_language: Literal["scenes", "toy_world"] = Field(
        "scenes", description="scenes: free-form scenes from the tiny presets' vocabulary; toy_world: prompts of the "
                              "toy model's grammar (engine/toy_world), which it was trained on.")
    step_cache: bool | dict[str, Any] | None = Field(
        None, description="Sent as each request's step_cache (None: the server's default); the diffusers baseline "
                          "never caches.")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: dict[str, float]) -> dict[str, float]:
        if not sizes:
            raise ValueError("must name at least one 'WxH' size")
        for size, weight in sizes.items():
            parse_size(size)
            if not weight > 0:
                raise ValueError(f"weight of {size!r} must be greater than 0 (got {weight})")
        return sizes

    @field_validator("i2v_fraction", "repeated_prompt_fraction")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be between 0 and 1 (got {value})")
        return value

    @field_validator("prompt_pool_size", "image_pool_size")
    @classmethod
    def _pool_size(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1 (got {value})")
        return value

    @field_validator("num_frames", "steps")
    @classmethod
    def _positive_choices(cls, values: tuple[int, ...]) -> tuple[int, ...]:
        if not values or any(value < 1 for value in values):
            raise ValueError(f"must be a non-empty list of integers >= 1 (got {list(values)})")
        return values

    @field_validator("guidance_scales")
    @classmethod
    def _guidance_choices(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or any(value < 0 for value in values):
            raise ValueError(f"must be a non-empty list of numbers >= 0 (got {list(values)})")
        return values

    @classmethod
    def load(cls, source: str | Path) -> WorkloadMix:
        """``default`` or a JSON mix file."""
        if str(source) == "default":
            return cls()
        path = Path(source)
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except OSError as error:
            raise ValueError(f"mix file {path} cannot be read: {error}") from None


@dataclass(frozen=True)
class WorkloadRequest:
    """One request as the API takes it; ``None`` fields are left to the server's defaults."""

    prompt: str
    negative_prompt: str | None
    size: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    image: bytes | None = field(default=None, repr=False)  # PNG first frame for image-to-video
    step_cache: bool | dict[str, Any] | None = None

    @property
    def is_image_to_video(self) -> bool:
        return self.image is not None

    @property
    def width(self) -> int:
        return parse_size(self.size)[0]

    @property
    def height(self) -> int:
        return parse_size(self.size)[1]

    def api_fields(self) -> dict[str, str | int | float]:
        """The POST /v1/videos fields, without the image."""
        fields: dict[str, str | int | float] = {
            "prompt": self.prompt,
            "size": self.size,
            "num_frames": self.num_frames,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "seed": self.seed,
        }
        if self.negative_prompt is not None:
            fields["negative_prompt"] = self.negative_prompt
        if self.step_cache is not None:
            fields["step_cache"] = self.step_cache
        return fields


def prompt_pool(mix: WorkloadMix, seed: int) -> tuple[str, ...]:
    """The shared prompts that repeated requests draw from (distinct, deterministic)."""
    rng = np.random.default_rng((seed, _WORKLOAD_STREAM, 1))
    pool: list[str] = []
    for slot in range(mix.prompt_pool_size):
        candidate = _prompt(mix, rng)
        pool.append(candidate if candidate not in pool else f"{candidate}, scene {slot}")
    return tuple(pool)


def build_workload(mix: WorkloadMix, count: int, seed: int) -> list[WorkloadRequest]:
    """``count`` requests drawn from ``mix``; the same arguments always give the same list."""
    if count < 0:
        raise ValueError(f"count must be at least 0 (got {count})")
    rng = np.random.default_rng((seed, _WORKLOAD_STREAM))
    pool = prompt_pool(mix, seed)
    sizes = list(mix.sizes)
    weights = np.asarray([mix.sizes[size] for size in sizes], dtype=float)
    weights /= weights.sum()
    images: dict[tuple[int, str], bytes] = {}
    requests = []
    for index in range(count):
        size = sizes[int(rng.choice(len(sizes), p=weights))]
        if rng.random() < mix.repeated_prompt_fraction:
            prompt = pool[int(rng.integers(len(pool)))]
        elif mix.prompt_language == "toy_world":
            # A closed grammar: random scenes (thousands of two-object ones) rarely repeat.
            prompt = _prompt(mix, rng)
        else:
            # The seed is in the text so that another run's unique prompts are not cache hits.
            prompt = f"{_scene(rng)}, take {seed}-{index}"
        image = None
        if rng.random() < mix.i2v_fraction:
            key = (int(rng.integers(mix.image_pool_size)), size)
            if key not in images:
                images[key] = generated_image(key[0], *parse_size(size), seed=seed)
            image = images[key]
        requests.append(
            WorkloadRequest(
                prompt=prompt,
                negative_prompt=mix.negative_prompt,
                size=size,
                num_frames=int(mix.num_frames[int(rng.integers(len(mix.num_frames)))]),
                num_inference_steps=int(mix.steps[int(rng.integers(len(mix.steps)))]),
                guidance_scale=float(mix.guidance_scales[int(rng.integers(len(mix.guidance_scales)))]),
                seed=int(rng.integers(0, 2**31 - 1)),
                image=image,
                step_cache=mix.step_cache,
            )
        )
    return requests


def generated_image(index: int, width: int, height: int, seed: int) -> bytes:
    """A PNG first frame: a seeded colour gradient with noise, different for each ``index``."""
    from PIL import Image

    rng = np.random.default_rng((seed, _IMAGE_STREAM, index))
    y, x = np.mgrid[0:height, 0:width].astype(float)
    start, slope = rng.uniform(0, 255, 3), rng.uniform(-1.0, 1.0, (3, 2))
    channels = [start[c] + slope[c, 0] * x * 255 / width + slope[c, 1] * y * 255 / height for c in range(3)]
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 12, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def poisson_arrivals(rate_per_s: float, duration_s: float, seed: int) -> list[float]:
    """Arrival offsets in seconds of a Poisson process at ``rate_per_s``, all below ``duration_s``."""
    if not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be greater than 0 (got {rate_per_s})")
    if not duration_s > 0:
        raise ValueError(f"duration_s must be greater than 0 (got {duration_s})")
    rng = np.random.default_rng((seed, _ARRIVAL_STREAM))
    arrivals: list[float] = []
    now = rng.exponential(1.0 / rate_per_s)
    while now < duration_s:
        arrivals.append(float(now))
        now += rng.exponential(1.0 / rate_per_s)
    return arrivals


def open_loop_plan(mix: WorkloadMix, rate_per_s: float, duration_s: float, max_requests: int,
                   seed: int) -> tuple[list[float], list[WorkloadRequest]]:
    """Arrival offsets and their requests, capped at ``max_requests``.

    The load generator and the diffusers baseline both call this, so that given the
    same arguments they are handed the same requests at the same offsets.
    """
    if max_requests < 1:
        raise ValueError(f"max_requests must be at least 1 (got {max_requests})")
    arrivals = poisson_arrivals(rate_per_s, duration_s, seed)[:max_requests]
    return arrivals, build_workload(mix, len(arrivals), seed)


def _prompt(mix: WorkloadMix, rng: np.random.Generator) -> str:
    if mix.prompt_language == "toy_world":
        from engine.toy_world.grammar import sample_scene, scene_to_prompt

        return scene_to_prompt(sample_scene(rng, allow_held_out=True))
    return _scene(rng)


def _scene(rng: np.random.Generator) -> str:
    parts = [options[int(rng.integers(len(options)))] for options in (_SUBJECTS, _ACTIONS, _PLACES, _SHOTS)]
    return f"{parts[0]} {parts[1]} {parts[2]}, {parts[3]}"
