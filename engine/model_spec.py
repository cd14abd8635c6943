"""What the engine knows about a model: where it lives, its defaults and its limits."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Task(str, enum.Enum):
    TEXT_TO_VIDEO = "t2v"
    IMAGE_TO_VIDEO = "i2v"


@dataclass(frozen=True)
class GenerationDefaults:
    """Values a request gets for every field it leaves out."""

    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    fps: int
    flow_shift: float
    negative_prompt: str


@dataclass(frozen=True)
class GenerationLimits:
    """Inclusive bounds a request must stay within; checked by request_validation."""

    min_size: int = 16
    max_size: int = 1280
    size_multiple: int = 16
    min_frames: int = 1
    max_frames: int = 81
    max_steps: int = 100
    max_guidance_scale: float = 30.0
    max_prompt_chars: int = 4000
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 4096


@dataclass(frozen=True)
class LatentGeometry:
    """Shape facts read from the model's VAE and transformer configs."""

    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    patch_size: tuple[int, int, int]
    text_max_length: int = 512

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        return (
            1,
            self.latent_channels,
            (num_frames - 1) // self.temporal_factor + 1,
            height // self.spatial_factor,
            width // self.spatial_factor,
        )


@dataclass(frozen=True)
class ModelSpec:
    """A loadable model: ``source`` is a local directory or a Hugging Face repo id."""

    name: str
    source: str
    task: Task
    defaults: GenerationDefaults
    limits: GenerationLimits
    geometry: LatentGeometry

    @property
    def is_image_to_video(self) -> bool:
        return self.task is Task.IMAGE_TO_VIDEO
