"""The one small interface every model family implements.

A family is everything that differs between, say, Wan and LTX-Video: how a checkpoint's
configs translate into geometry and limits, how text and a first frame are encoded, how
one batched denoising step is laid out for its transformer, and how latents become
frames. The engine's batching, scheduling, parallel executors and the whole serve/ layer
only ever talk to these protocols, so a new family is a new package under
engine/families/ and one line in engine/families/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from engine.models.model_spec import GenerationDefaults, GenerationLimits, LatentGeometry, Task

if TYPE_CHECKING:
    import numpy as np
    import torch

    from engine.models.model_spec import ModelSpec
    from engine.stage_placement import StagePlacement
    from engine.stage_types import (
        DenoiseTask,
        EncodedText,
        Frames,
        GenerationRequest,
        ImageConditioning,
        Latents,
        TextEmbeddings,
    )
    from engine.stages.denoiser import DenoiseState


@dataclass(frozen=True)
class CheckpointTraits:
    """What a family reads from a checkpoint's small config files (no weights loaded)."""

    tasks: frozenset[Task]
    geometry: LatentGeometry
    limits: GenerationLimits
    # diffusers' own defaults for this pipeline class, refined by the checkpoint's configs;
    # a named preset overrides them with its published settings.
    defaults: GenerationDefaults
    boundary_ratio: float | None = None
    # model_index.json component names whose weights each stage loads, for finding stages
    # whose weights are byte-identical across the models of one app.
    stage_components: Mapping[str, tuple[str, ...]] = None  # type: ignore[assignment]


class TextEncoding(Protocol):
    def encode_text(self, text: str) -> EncodedText: ...


class ImageConditioningStage(Protocol):
    def condition(self, request: GenerationRequest) -> ImageConditioning: ...


class Denoising(Protocol):
    """The step protocol: prepare a request, start it, step batches of started requests, finish."""

    spec: ModelSpec

    def prepare(self, request: GenerationRequest, text: TextEmbeddings,
                image: ImageConditioning | None) -> DenoiseTask: ...

    def start(self, task: DenoiseTask) -> DenoiseState: ...

    def step(self, states: list[DenoiseState]) -> None: ...

    def finish(self, state: DenoiseState) -> Latents: ...

    def batch_key(self, task: DenoiseTask) -> Hashable: ...

    def step_tokens(self, task: DenoiseTask) -> int: ...


class Decoding(Protocol):
    def decode(self, latents: Latents, fps: int) -> Frames: ...

    def decode_latents(self, latents: torch.Tensor, generator_state: torch.Tensor | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelFamily:
    name: str
    # model_index.json `_class_name` -> the tasks a directory of that class runs
    pipelines: Mapping[str, frozenset[Task]]
    read_traits: Callable[[str, dict], CheckpointTraits]  # (source, model_index) -> traits
    tasks_of: Callable[[dict], frozenset[Task]]  # from model_index.json alone
    # The diffusers pipeline class whose output the family reproduces, per task (the oracle).
    reference_pipelines: Mapping[Task, str]
    text_encoder: Callable[[ModelSpec, StagePlacement], TextEncoding]
    image_conditioner: Callable[[ModelSpec, StagePlacement], ImageConditioningStage]
    denoiser: Callable[..., Denoising]  # (spec, placement, compile_transformer=False)
    vae_decoder: Callable[..., Decoding]  # (spec, placement, compile_decoder=False)
    # The parallel modes (engine/parallel) its transformer can be split with.
    parallel_modes: tuple[str, ...] = ()
    # How many CLIP-style image tokens the DiT sees per image, from configs; None without an image encoder.
    image_embed_tokens: Callable[[ModelSpec], int | None] = lambda spec: None
