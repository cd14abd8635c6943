"""The oracle: diffusers' own pipeline of the class a checkpoint is run as, called for one request."""

from __future__ import annotations

import numpy as np
import torch

from engine.models.model_spec import ModelSpec, Task
from engine.stage_types import GenerationRequest
from engine.stages.image_conditioner import decode_image
from engine.stages.vae_decoder import to_uint8

PIPELINE_CLASSES = {
    ("wan", Task.TEXT_TO_VIDEO): "WanPipeline",
    ("wan", Task.IMAGE_TO_VIDEO): "WanImageToVideoPipeline",
    ("ltx", Task.TEXT_TO_VIDEO): "LTXPipeline",
    ("ltx", Task.IMAGE_TO_VIDEO): "LTXImageToVideoPipeline",
}


def diffusers_pipeline(spec: ModelSpec, task: Task):
    """diffusers' pipeline for ``task`` on the model's directory, through from_pretrained."""
    import diffusers

    pipeline = getattr(diffusers, PIPELINE_CLASSES[(spec.family, task)]).from_pretrained(spec.source)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def reference(spec: ModelSpec, pipeline, request: GenerationRequest, **overrides) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' final latents ([1, C, T, h, w]) and uint8 frames for ``request``, seeded as it is."""
    arguments = dict(
        prompt=request.prompt, negative_prompt=request.negative_prompt, height=request.height, width=request.width,
        num_frames=request.num_frames, num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
    )
    if request.guidance_scale_2 is not None:
        arguments["guidance_scale_2"] = request.guidance_scale_2
    if spec.family == "ltx":
        arguments.update(frame_rate=request.fps, decode_timestep=spec.defaults.decode_timestep,
                         decode_noise_scale=spec.defaults.decode_noise_scale)
    if request.image is not None:
        arguments["image"] = decode_image(request.image)
    arguments.update(overrides)
    latents = pipeline(generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent",
                       **arguments).frames
    frames = pipeline(generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np", **arguments).frames
    if spec.family == "ltx":  # LTX hands its latents back packed
        from diffusers import LTXPipeline

        _, _, latent_frames, height, width = spec.geometry.latent_shape(request.num_frames, request.height,
                                                                         request.width)
        latents = LTXPipeline._unpack_latents(latents, latent_frames, height, width, spec.geometry.patch_size[1],
                                              spec.geometry.patch_size[0])
    return latents, to_uint8(frames[0])
