"""One frozen dataclass per stage boundary.

They hold tensors, arrays and plain values only (never model objects), so each can be
pickled into Ray's object store and handed to a stage living in another process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from engine.models.model_spec import Task
from engine.step_cache.options import StepCacheOptions


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
    flow_shift: float | None  # None: the model's scheduler derives its own shift
    seed: int
    fps: int
    image: bytes | None = field(default=None, repr=False)
    guidance_scale_2: float | None = None  # the low-noise expert's, on two-expert models only
    step_cache: StepCacheOptions | None = None  # None: every step runs the whole transformer (lossless)

    @property
    def uses_classifier_free_guidance(self) -> bool:
        # diffusers' Wan and LTX pipelines run the unconditional pass only when guidance > 1
        # (guidance_scale, for both experts of a two-expert model).
        return self.guidance_scale > 1.0


@dataclass(frozen=True)
class TextRequest:
    """What the text encoder reads of a request: its prompt, and the negative prompt when
    classifier-free guidance runs the unconditional pass (None otherwise)."""

    prompt: str
    negative_prompt: str | None

    @classmethod
    def of(cls, request: GenerationRequest) -> TextRequest:
        return cls(request.prompt, request.negative_prompt if request.uses_classifier_free_guidance else None)


@dataclass(frozen=True)
class EncodedText:
    """One text through the model's text encoder, padded to its max length as diffusers pads it."""

    embeds: torch.Tensor  # [1, L, D]
    attention_mask: torch.Tensor | None = None  # [1, L] bool, for families whose DiT masks the padding (LTX)


@dataclass(frozen=True)
class TextEmbeddings:
    """The prompt's and the negative prompt's encodings."""

    prompt_embeds: torch.Tensor  # [1, L, D]
    negative_prompt_embeds: torch.Tensor | None  # [1, L, D]; None when guidance <= 1
    prompt_attention_mask: torch.Tensor | None = None  # [1, L]; None where the family uses no mask (Wan)
    negative_prompt_attention_mask: torch.Tensor | None = None

    @classmethod
    def of(cls, prompt: EncodedText, negative: EncodedText | None) -> TextEmbeddings:
        return cls(
            prompt_embeds=prompt.embeds,
            negative_prompt_embeds=None if negative is None else negative.embeds,
            prompt_attention_mask=prompt.attention_mask,
            negative_prompt_attention_mask=None if negative is None else negative.attention_mask,
        )


@dataclass(frozen=True)
class ImageConditioning:
    """Image-to-video conditioning: image embeds and the encoded first frame, as the family lays it out.

    Wan 2.1 / 2.2 A14B: ``condition`` is the first-frame mask and VAE latents, [1, 4 + C, T, h, w].
    Wan 2.2 TI2V: the first frame's normalised latents, [1, C, 1, h, w].
    LTX: the VAE posterior's parameters (mean and log-variance), [1, 2C, 1, h, w]; each
    request samples from it with its own seed, as LTXImageToVideoPipeline does.
    """

    image_embeds: torch.Tensor | None  # [1, N, Dimg]; None for models without an image encoder
    condition: torch.Tensor
    # LTX: the VAE's per-channel latent statistics the sampled first frame is normalised with.
    latents_mean: torch.Tensor | None = None  # [C]
    latents_std: torch.Tensor | None = None  # [C]


@dataclass(frozen=True)
class DenoiseTask:
    """Everything the denoiser needs for one request, from its first step to its last."""

    request_id: str
    initial_latents: torch.Tensor  # float32, drawn from the request's seed, in the family's layout
    text: TextEmbeddings
    image: ImageConditioning | None
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float | None
    guidance_scale_2: float | None = None  # two-expert models: the low-noise expert's guidance
    video_size: tuple[int, int, int] = (0, 0, 0)  # num_frames, height, width in pixels
    fps: int = 0  # LTX's rotary embedding depends on the frame rate
    # The request's random generator after every draw so far: a decoder that draws noise
    # too (LTX's timestep-conditioned VAE) continues from it, as diffusers' pipeline does.
    generator_state: torch.Tensor | None = field(default=None, repr=False)
    step_cache: StepCacheOptions | None = None


@dataclass(frozen=True)
class Latents:
    """Final denoised latents, ready for the VAE."""

    request_id: str
    latents: torch.Tensor  # [1, C, T, h, w]
    generator_state: torch.Tensor | None = field(default=None, repr=False)  # see DenoiseTask
    # Step caching: the steps whose conditional row skipped the transformer's later blocks.
    reused_steps: int | None = None


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
