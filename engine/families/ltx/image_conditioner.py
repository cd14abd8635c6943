"""LTX image-to-video conditioning: the first frame's VAE posterior.

LTXImageToVideoPipeline *samples* the first frame's latents with the request's
generator, so what is cacheable across requests is the posterior itself (mean and
log-variance) and the VAE's latent statistics; each request samples from it with its
own seed in the Denoiser (engine/families/ltx/denoiser.py).
"""

from __future__ import annotations

import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import GenerationRequest, ImageConditioning
from engine.stages.image_conditioner import decode_image


class LTXImageConditioner:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from diffusers import AutoencoderKLLTXVideo
        from diffusers.video_processor import VideoProcessor

        self.spec = spec
        self.placement = placement or StagePlacement()
        root = local_model_directory(spec, "vae")
        self.vae = AutoencoderKLLTXVideo.from_pretrained(root, subfolder="vae", torch_dtype=self.placement.torch_dtype)
        self.vae.to(self.placement.device).eval()
        self.video_processor = VideoProcessor(vae_scale_factor=spec.geometry.spatial_factor)

    @torch.no_grad()
    def condition(self, request: GenerationRequest) -> ImageConditioning:
        if request.image is None:
            raise ValueError("image-to-video needs request.image")
        pixels = self.video_processor.preprocess(decode_image(request.image), height=request.height,
                                                 width=request.width)
        pixels = pixels.to(self.placement.device, dtype=self.vae.dtype)
        # The pipeline encodes each image as a one-frame video: [1, 3, 1, H, W].
        posterior = self.vae.encode(pixels[0].unsqueeze(0).unsqueeze(2)).latent_dist
        return ImageConditioning(
            image_embeds=None,
            condition=posterior.parameters,
            latents_mean=self.vae.latents_mean.detach().clone(),
            latents_std=self.vae.latents_std.detach().clone(),
        )
