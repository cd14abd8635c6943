"""Wan's VAE (2.1, and 2.2's 16x one): un-normalise with its latents mean/std and decode, as WanPipeline does."""

from __future__ import annotations

import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stages.vae_decoder import VaeDecoder


class WanVaeDecoder(VaeDecoder):
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_decoder: bool = False):
        from diffusers import AutoencoderKLWan

        placement = placement or StagePlacement()
        vae = AutoencoderKLWan.from_pretrained(local_model_directory(spec, "vae"), subfolder="vae",
                                               torch_dtype=placement.torch_dtype)
        super().__init__(spec, placement, vae, compile_decoder)
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        self._latents_mean = torch.tensor(config.latents_mean).view(shape)
        self._latents_inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape)

    def _decode_video(self, latents: torch.Tensor, generator_state: torch.Tensor | None) -> torch.Tensor:
        # diffusers has no public function for this: the same expression as WanPipeline's.
        z = latents.to(self.device, dtype=self.vae.dtype)
        mean = self._latents_mean.to(z.device, z.dtype)
        inverse_std = self._latents_inverse_std.to(z.device, z.dtype)
        z = z / inverse_std + mean
        return self.vae.decode(z, return_dict=False)[0]
