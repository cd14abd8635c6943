"""VAE decoder stage: Latents -> uint8 Frames."""

from __future__ import annotations

import numpy as np
import torch

from engine.compiled_for_shapes import CompiledForShapes
from engine.model_registry import local_model_directory
from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import Frames, Latents


class VaeDecoder:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None = None, compile_decoder: bool = False):
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
        # The decoder runs once per latent frame (it carries a causal cache across calls): that
        # module is what gets compiled, for the video sizes warm_up_compiled() prepares.
        self._compiled_decoder = torch.compile(self.vae.decoder) if compile_decoder else None
        self.compiled = CompiledForShapes("VAE decode") if compile_decoder else None

    @torch.no_grad()
    def warm_up_compiled(self, width: int, height: int, num_frames: int) -> tuple:
        """Compile the decoder for videos of this size (slow: call it before serving)."""
        if self.compiled is None:
            raise ValueError("warm_up_compiled() needs VaeDecoder(compile_decoder=True)")
        z = torch.zeros(self.spec.geometry.latent_shape(num_frames, height, width), dtype=self.vae.dtype,
                        device=self.placement.device)
        shape = _decode_shape(z)
        self.compiled.warm_up(shape, lambda: self._decode_with(self._compiled_decoder, z))
        return shape

    def decode(self, latents: Latents, fps: int) -> Frames:
        return Frames(request_id=latents.request_id, frames=self.decode_latents(latents.latents), fps=fps)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Un-normalise and decode as WanPipeline does (diffusers has no public function for it)."""
        z = latents.to(self.placement.device, dtype=self.vae.dtype)
        mean = self._latents_mean.to(z.device, z.dtype)
        inverse_std = self._latents_inverse_std.to(z.device, z.dtype)
        z = z / inverse_std + mean
        if self.compiled is None:
            video = self.vae.decode(z, return_dict=False)[0]
        else:
            video = self.compiled.run(_decode_shape(z), compiled=lambda: self._decode_with(self._compiled_decoder, z),
                                      eager=lambda: self.vae.decode(z, return_dict=False)[0])
        frames = self.video_processor.postprocess_video(video, output_type="np")[0]  # float [F, H, W, 3] in [0, 1]
        return to_uint8(frames)


    def _decode_with(self, decoder: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
        """diffusers' own decode loop, with ``decoder`` as the per-frame module."""
        eager = self.vae.decoder
        self.vae.decoder = decoder
        try:
            return self.vae.decode(z, return_dict=False)[0]
        finally:
            self.vae.decoder = eager


def _decode_shape(z: torch.Tensor) -> tuple:
    # The frame count belongs in it: each frame's slice of the latents has strides that
    # depend on the whole length, and the compiled decoder is guarded on them.
    return (*z.shape, z.dtype)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest (diffusers' export truncates)."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
