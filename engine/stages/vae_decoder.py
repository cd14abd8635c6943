"""VAE decoder stage: Latents -> uint8 Frames."""

from __future__ import annotations

import numpy as np
import torch

from engine.model_registry import local_model_directory
from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import Frames, Latents


class VaeDecoder:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None):
        from diffusers import AutoencoderKLWan
        from diffusers.video_processor import VideoProcessor

        self.spec = spec
        self.placement = placement or StagePlacement()
        self.vae = AutoencoderKLWan.from_pretrained(
            local_model_directory(spec, "vae"), subfolder="vae", torch_dtype=self.placement.torch_dtype
        )
        self.vae.to(self.placement.device).eval()
        self.video_processor = VideoProcessor(vae_scale_factor=spec.geometry.spatial_factor)
        config = self.vae.config
        shape = (1, config.z_dim, 1, 1, 1)
        self._latents_mean = torch.tensor(config.latents_mean).view(shape)
        self._latents_inverse_std = 1.0 / torch.tensor(config.latents_std).view(shape)

    def decode(self, latents: Latents, fps: int) -> Frames:
        return Frames(request_id=latents.request_id, frames=self.decode_latents(latents.latents), fps=fps)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Un-normalise and decode as WanPipeline does (diffusers has no public function for it)."""
        z = latents.to(self.placement.device, dtype=self.vae.dtype)
        mean = self._latents_mean.to(z.device, z.dtype)
        inverse_std = self._latents_inverse_std.to(z.device, z.dtype)
        video = self.vae.decode(z / inverse_std + mean, return_dict=False)[0]
        frames = self.video_processor.postprocess_video(video, output_type="np")[0]  # float [F, H, W, 3] in [0, 1]
        return to_uint8(frames)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest (diffusers' export truncates)."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
