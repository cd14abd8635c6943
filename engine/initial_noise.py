"""The request's initial latents, drawn from its seed."""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor

from engine.models.model_spec import LatentGeometry
from engine.stage_types import GenerationRequest


def initial_latents(request: GenerationRequest, geometry: LatentGeometry) -> torch.Tensor:
    """float32 noise on the CPU; equal to what diffusers draws with a CPU generator.

    Drawing on the CPU makes a seed mean the same video on every device, which is what
    lets a job retried on another replica (or another GPU type) reproduce itself.
    """
    generator = torch.Generator("cpu").manual_seed(request.seed)
    shape = geometry.latent_shape(request.num_frames, request.height, request.width)
    return randn_tensor(shape, generator=generator, dtype=torch.float32)
