"""LTX-Video's VAE: un-normalise, mix in the decode noise of a timestep-conditioned VAE, decode; as LTXPipeline does."""

from __future__ import annotations

import torch

from engine.models.model_source import local_model_directory
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stages.vae_decoder import VaeDecoder


class LTXVaeDecoder(VaeDecoder):
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_decoder: bool = False):
        from diffusers import AutoencoderKLLTXVideo

        placement = placement or StagePlacement()
        vae = AutoencoderKLLTXVideo.from_pretrained(local_model_directory(spec, "vae"), subfolder="vae",
                                                    torch_dtype=placement.torch_dtype)
        super().__init__(spec, placement, vae, compile_decoder)
        self._decode_timestep = spec.defaults.decode_timestep
        noise_scale = spec.defaults.decode_noise_scale
        self._decode_noise_scale = self._decode_timestep if noise_scale is None else noise_scale

    def _decode_video(self, latents: torch.Tensor, generator_state: torch.Tensor | None) -> torch.Tensor:
        from diffusers import LTXPipeline
        from diffusers.utils.torch_utils import randn_tensor

        vae = self.vae
        z = LTXPipeline._denormalize_latents(latents.to(self.device), vae.latents_mean, vae.latents_std,
                                             vae.config.scaling_factor).to(vae.dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            if generator_state is None:
                raise ValueError("a timestep-conditioned LTX VAE needs the request's generator state to draw its noise")
            # The request's generator continues where the Denoiser's draws left it, as in the pipeline.
            generator = torch.Generator("cpu")
            generator.set_state(generator_state)
            noise = randn_tensor(z.shape, generator=generator, device=self.device, dtype=z.dtype)
            timestep = torch.tensor([self._decode_timestep], device=self.device, dtype=z.dtype)
            scale = torch.tensor([self._decode_noise_scale], device=self.device, dtype=z.dtype)[:, None, None, None, None]
            z = (1 - scale) * z + scale * noise
        return vae.decode(z.to(vae.dtype), timestep, return_dict=False)[0]

    def _warm_up_generator_state(self) -> torch.Tensor | None:
        return torch.Generator("cpu").manual_seed(0).get_state()
