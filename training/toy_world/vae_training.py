"""Training the toy AutoencoderKLWan on rendered clips, then measuring its latent statistics.

The clips are flat shapes on flat backgrounds, so a small VAE learns them in minutes; the
loss is pixel L1 + MSE (colours must come back exact enough for the adherence detector)
with a small KL term that keeps the posterior well-behaved for the DiT.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from training.toy_world.architecture import ToyArchitecture, build_vae
from training.toy_world.clips import clip_pixels, draw_clips


@dataclass(frozen=True)
class VaePhase:
    steps: int
    batch_size: int
    frames: int  # 1 + 4k


@dataclass(frozen=True)
class VaeTrainingSettings:
    # First single frames, cheap and many (the causal VAE encodes a clip's first frame alone,
    # with the same spatial weights as the rest), then whole clips: the decoder runs chunk by
    # chunk with a cache of the chunk before, and chunks it never saw in training (trained on
    # 9 frames, decoded 17) come out wrong.
    phases: tuple[VaePhase, ...] = (VaePhase(steps=400, batch_size=16, frames=1),
                                    VaePhase(steps=1000, batch_size=2, frames=17))
    learning_rate: float = 1e-3
    kl_weight: float = 1e-3
    latent_noise: float = 0.05
    object_weight: float = 10.0
    seed: int = 20261210
    statistics_clips: int = 64


def train_vae(arch: ToyArchitecture, settings: VaeTrainingSettings,
              on_step: Callable[[int, dict[str, float]], None] = lambda step, losses: None):
    """A trained VAE whose config carries the per-channel latents_mean / latents_std of the data."""
    import torch

    vae = build_vae(arch).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    total = sum(phase.steps for phase in settings.phases)
    step = 0
    for number, phase in enumerate(settings.phases):
        clips = draw_clips(phase.steps * phase.batch_size, settings.seed + 100 * number)
        for index in range(phase.steps):
            batch = clips[index * phase.batch_size:(index + 1) * phase.batch_size]
            pixels = clip_pixels(batch, arch.width, arch.height, phase.frames)
            for group in optimizer.param_groups:
                group["lr"] = _cosine(step, total, settings.learning_rate)
            losses = _training_step(vae, optimizer, pixels, settings, generator)
            on_step(step, {"frames": phase.frames, **losses})
            step += 1
    vae.eval()
    mean, std = latent_statistics(vae, arch, settings)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    return vae


def _training_step(vae, optimizer, pixels, settings: VaeTrainingSettings, generator) -> dict[str, float]:
    import torch

    posterior = vae.encode(pixels).latent_dist
    # A little noise on the mode, not the posterior's own std: the decoder learns to take
    # slightly-off latents (as a DiT gives it) without drowning the signal early on.
    latents = posterior.mean + settings.latent_noise * torch.randn(posterior.mean.shape, generator=generator)
    reconstruction = decode_unclamped(vae, latents)
    # The shapes cover a few percent of the pixels: unweighted, a VAE that paints only the
    # background scores well. Object pixels weigh more.
    objects = _object_mask(pixels)
    weight = 1.0 + settings.object_weight * objects
    error = reconstruction - pixels
    l1 = (error.abs() * weight).mean() / weight.mean()
    mse = (error.pow(2) * weight).mean() / weight.mean()
    # Keeps the latents' scale bounded (the posterior's variance is never used: inference takes modes).
    kl = 0.5 * posterior.mean.pow(2).mean()
    loss = l1 + mse + settings.kl_weight * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
    optimizer.step()
    per_channel = objects.expand_as(error)
    return {"l1": l1.item(), "mse": mse.item(), "kl": kl.item(),
            "object_l1": (error.abs() * per_channel).sum().item() / max(1.0, per_channel.sum().item())}


def latent_statistics(vae, arch: ToyArchitecture, settings: VaeTrainingSettings) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior modes over full-length clips: the DiT works on
    normalised latents, ``(z - mean) / std``, as Wan 2.2's pipelines do."""
    import torch

    clips = draw_clips(settings.statistics_clips, settings.seed + 1)
    modes = []
    with torch.no_grad():
        for start in range(0, len(clips), 8):
            pixels = clip_pixels(clips[start:start + 8], arch.width, arch.height, arch.num_frames)
            modes.append(vae.encode(pixels).latent_dist.mode())
    latents = torch.cat(modes).transpose(0, 1).flatten(1)  # [C, everything]
    return latents.mean(1).tolist(), latents.std(1).clamp_min(1e-3).tolist()


def decode_unclamped(vae, latents):
    """``AutoencoderKLWan._decode`` (diffusers 0.42) without its final clamp to [-1, 1]: the clamp
    has no gradient outside that range, so a decoder whose output saturates on the wrong side
    never comes back. Same frame-by-frame loop through the causal cache; inference keeps the clamp."""
    import torch

    vae.clear_cache()
    x = vae.post_quant_conv(latents)
    frames = []
    for index in range(x.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(x[:, :, index:index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                                  first_chunk=index == 0))
    vae.clear_cache()
    return torch.cat(frames, 2)


def _object_mask(pixels):
    """1 where a pixel differs from the background (every clip's corner pixel is background), else 0."""
    background = pixels[:, :, :1, :1, :1]
    return ((pixels - background).abs().amax(dim=1, keepdim=True) > 0.05).float()


def _cosine(step: int, total: int, peak: float, warmup: int = 50, floor: float = 0.05) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
