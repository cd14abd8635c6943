"""Training clips encoded once by the trained VAE: normalised latents and the prompts beside them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.toy_world.architecture import ToyArchitecture
from training.toy_world.clips import clip_pixels, draw_clips

ENCODE_BATCH = 8


@dataclass(frozen=True)
class LatentDataset:
    latents: torch.Tensor  # [N, C, T, h, w], normalised as the DiT sees them: (mode - mean) / std
    prompts: tuple[str, ...]


def encode_clips(vae, arch: ToyArchitecture, count: int, seed: int,
                 on_batch: Callable[[int], None] = lambda done: None) -> LatentDataset:
    """``count`` training clips through the VAE's encoder, taking the posterior's mode as
    WanImageToVideoPipeline does for the first frame (``sample_mode="argmax"``)."""
    clips = draw_clips(count, seed)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    batches = []
    with torch.no_grad():
        for start in range(0, count, ENCODE_BATCH):
            pixels = clip_pixels(clips[start:start + ENCODE_BATCH], arch.width, arch.height, arch.num_frames)
            batches.append((vae.encode(pixels).latent_dist.mode() - mean) / std)
            on_batch(min(count, start + ENCODE_BATCH))
    return LatentDataset(torch.cat(batches), tuple(clip.prompt for clip in clips))
