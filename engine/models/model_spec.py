"""What the engine knows about a model: where it lives, which family runs it, its defaults and its limits.

Limits and geometry are read from the checkpoint's own configs (VAE compression,
transformer patch size, positional-embedding range) by the model's family; presets and
the registry only choose *defaults*. A size or frame count the architecture runs is
never refused.
"""

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
    # None where the model's scheduler has no static shift a request could set (LTX derives it
    # from the video's token count).
    flow_shift: float | None
    negative_prompt: str
    # The low-noise expert's guidance (two-expert models only); None: the same as guidance_scale.
    guidance_scale_2: float | None = None
    # LTX's timestep-conditioned VAE: the decode timestep and how much noise is mixed in first.
    decode_timestep: float = 0.0
    decode_noise_scale: float | None = None


@dataclass(frozen=True)
class GenerationLimits:
    """What a request may ask of this model. The geometry rules come from the checkpoint."""

    size_multiple: int
    # Why sizes are multiples of size_multiple, for error messages ("the VAE's 8x downsampling ...").
    size_rule: str
    frame_step: int  # frame counts are frame_step * k + 1
    max_size: int | None = None  # the positional embedding's range; None when it has none
    max_frames: int | None = None
    max_steps: int = 100
    max_guidance_scale: float = 30.0
    max_prompt_chars: int = 4000
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_side: int = 4096

    @property
    def min_size(self) -> int:
        return self.size_multiple


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

    def tokens(self, num_frames: int, height: int, width: int) -> int:
        """Transformer tokens of one video of this size (one row of a forward)."""
        _, _, frames, latent_height, latent_width = self.latent_shape(num_frames, height, width)
        p_t, p_h, p_w = self.patch_size
        return (frames // p_t) * (latent_height // p_h) * (latent_width // p_w)


@dataclass(frozen=True)
class ModelSpec:
    """A loadable model: ``source`` is a local directory or a Hugging Face repo id."""

    name: str
    source: str
    family: str  # engine/families: "wan", "ltx"
    pipeline_class: str  # the diffusers pipeline whose output this model reproduces
    tasks: frozenset[Task]
    defaults: GenerationDefaults
    limits: GenerationLimits
    geometry: LatentGeometry
    # Two-expert (mixture-of-experts) DiTs: the high-noise expert runs while the timestep is
    # at least boundary_ratio x num_train_timesteps, then the low-noise expert.
    boundary_ratio: float | None = None
    # (stage, model_index components whose weights it loads): stages of several models that
    # load byte-identical weights are deployed once (serve/model_stages.py).
    stage_components: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # A model trained on a closed prompt language names it (engine/prompt_grammars.py), so a
    # prompt outside it gets a note, never an error.
    prompt_grammar: str | None = None

    def components_of(self, stage: str) -> tuple[str, ...]:
        return dict(self.stage_components)[stage]

    @property
    def experts(self) -> int:
        return 1 if self.boundary_ratio is None else 2

    def supports(self, task: Task) -> bool:
        return task in self.tasks

    @property
    def needs_image(self) -> bool:
        """Image-to-video only: every request must bring its first frame."""
        return self.tasks == frozenset({Task.IMAGE_TO_VIDEO})

    @property
    def is_image_to_video(self) -> bool:
        """Can condition on a first frame (alone, or beside text-to-video from the same weights)."""
        return Task.IMAGE_TO_VIDEO in self.tasks

    def task_for(self, has_image: bool) -> Task:
        return Task.IMAGE_TO_VIDEO if has_image else Task.TEXT_TO_VIDEO
