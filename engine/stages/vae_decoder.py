"""VAE decoder stage: Latents -> uint8 Frames, with what every family's decoder shares.

A family says how its latents are un-normalised and handed to its VAE (``_decode_video``);
this class owns the VAE's placement, the optional compiled decoder, and the conversion
to uint8 frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from engine.compiling.compiled_for_shapes import CompiledForShapes
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from engine.stage_types import Frames, Latents


class VaeDecoder:
    def __init__(self, spec: ModelSpec, placement: StagePlacement | None, vae: torch.nn.Module,
                 compile_decoder: bool = False):
        from diffusers.video_processor import VideoProcessor

        self.spec = spec
        self.placement = placement or StagePlacement()
        self.vae = vae.to(self.placement.device).eval()
        self.video_processor = VideoProcessor(vae_scale_factor=spec.geometry.spatial_factor)
        # Wan's decoder runs once per latent frame (it carries a causal cache across calls),
        # LTX's once per video: either way vae.decoder is the module that gets compiled, for
        # the video sizes warm_up_compiled() prepares.
        self._compiled_decoder = torch.compile(self.vae.decoder) if compile_decoder else None
        self.compiled = CompiledForShapes("VAE decode") if compile_decoder else None

    @property
    def device(self) -> torch.device:
        return torch.device(self.placement.device)

    @torch.no_grad()
    def warm_up_compiled(self, width: int, height: int, num_frames: int) -> tuple:
        """Compile the decoder for videos of this size (slow: call it before serving)."""
        if self.compiled is None:
            raise ValueError("warm_up_compiled() needs compile_decoder=True")
        latents = torch.zeros(self.spec.geometry.latent_shape(num_frames, height, width))
        shape = _decode_shape(latents)
        self.compiled.warm_up(shape, lambda: self._with_decoder(self._compiled_decoder, self._decode_video, latents,
                                                                 self._warm_up_generator_state()))
        return shape

    def decode(self, latents: Latents, fps: int) -> Frames:
        frames = self.decode_latents(latents.latents, latents.generator_state)
        return Frames(request_id=latents.request_id, frames=frames, fps=fps)

    @torch.no_grad()
    def decode_many(self, requests: Sequence[tuple[Latents, int]]) -> list[Frames]:
        """Several requests' decodes, those of one latent shape in one VAE call, in order.

        A small video's decode is mostly per-call cost (Wan's decoder runs once per latent
        frame, many small convolutions each time), so one call for several videos costs little
        more than one for one. Each video's frames equal its own decode within float rounding.
        Decoded one at a time: a request with a generator state (its decode draws noise of its
        own) and a compiled decoder (compiled for one video's shape).
        """
        frames: dict[int, np.ndarray] = {}
        groups: dict[tuple, list[int]] = {}
        for index, (latents, _) in enumerate(requests):
            if self.compiled is not None or latents.generator_state is not None:
                frames[index] = self.decode_latents(latents.latents, latents.generator_state)
            else:
                groups.setdefault(_decode_shape(latents.latents), []).append(index)
        for indices in groups.values():
            batch = torch.cat([requests[index][0].latents for index in indices])
            for index, video in zip(indices, self._uint8_videos(self._decode_video(batch, None))):
                frames[index] = video
        return [Frames(request_id=latents.request_id, frames=frames[index], fps=fps)
                for index, (latents, fps) in enumerate(requests)]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, generator_state: torch.Tensor | None = None) -> np.ndarray:
        if self.compiled is None:
            video = self._decode_video(latents, generator_state)
        else:
            video = self.compiled.run(
                _decode_shape(latents),
                compiled=lambda: self._with_decoder(self._compiled_decoder, self._decode_video, latents,
                                                    generator_state),
                eager=lambda: self._decode_video(latents, generator_state),
            )
        return self._uint8_videos(video)[0]

    def _uint8_videos(self, video: torch.Tensor) -> list[np.ndarray]:
        """[B, 3, F, H, W] in [-1, 1] -> one uint8 [F, H, W, 3] per video."""
        return [to_uint8(frames) for frames in self.video_processor.postprocess_video(video, output_type="np")]

    def _decode_video(self, latents: torch.Tensor, generator_state: torch.Tensor | None) -> torch.Tensor:
        """The family's un-normalisation and VAE call, as its pipeline does it: [B, 3, F, H, W] in [-1, 1]."""
        raise NotImplementedError

    def _warm_up_generator_state(self) -> torch.Tensor | None:
        return None

    def _with_decoder(self, decoder: torch.nn.Module, function, *args):
        """``function(*args)`` with ``decoder`` as the VAE's decoder module (diffusers' own decode loop around it)."""
        eager = self.vae.decoder
        self.vae.decoder = decoder
        try:
            return function(*args)
        finally:
            self.vae.decoder = eager


def _decode_shape(latents: torch.Tensor) -> tuple:
    # The frame count belongs in it: each frame's slice of the latents has strides that
    # depend on the whole length, and the compiled decoder is guarded on them.
    return (*latents.shape, latents.dtype)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to nearest (diffusers' export truncates)."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
