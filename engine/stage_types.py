"""One frozen dataclass per stage boundary.

They hold tensors, arrays and plain values only (never model objects), so each can be
pickled into Ray's object store and handed to a stage living in another process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.model_spec import Task


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request with every default filled in (see request_validation)."""

    request_id: str
    model: str
    task: Task
    prompt: str
    negative_prompt: str
    width: int
    height: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float
    seed: int
    fps: int
    image: bytes | None = field(default=None, repr=False)

    @property
    def uses_classifier_free_guidance(self) -> bool:
        # diffusers' WanPipeline runs the unconditional pass only when guidance > 1.
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class TextEmbeddings:
    """UMT5 embeddings, zero-padded to the text encoder's max length like diffusers does."""

    prompt_embeds: torch.Tensor  # [1, L, D]
    negative_prompt_embeds: torch.Tensor | None  # [1, L, D]; None when guidance <= 1


@dataclass(frozen=True)
class ImageConditioning:
    """Image-to-video conditioning: CLIP image embeds and the encoded first frame."""

    image_embeds: torch.Tensor | None  # [1, N, Dimg]; None for models without an image encoder
    condition: torch.Tensor  # [1, 4 + C, T, h, w]: first-frame mask and VAE latents


@dataclass(frozen=True)
class DenoiseTask:
    """Everything the denoiser needs for one request, from its first step to its last."""

    request_id: str
    initial_latents: torch.Tensor  # [1, C, T, h, w] float32 noise drawn from the request's seed
    text: TextEmbeddings
    image: ImageConditioning | None
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float


@dataclass(frozen=True)
class Latents:
    """Final denoised latents, ready for the VAE."""

    request_id: str
    latents: torch.Tensor  # [1, C, T, h, w]


@dataclass(frozen=True)
class Frames:
    request_id: str
    frames: np.ndarray  # uint8 [F, H, W, 3]
    fps: int


@dataclass(frozen=True)
class VideoArtifact:
    request_id: str
    video_path: str  # H.264 MP4
    frames_path: str | None  # lossless uint8 [F, H, W, 3] .npy, when asked for
    num_frames: int
    width: int
    height: int
    fps: int
    seed: int
