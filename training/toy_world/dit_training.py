"""Training the toy WanTransformer3DModel by flow matching, for both tasks of a TI2V checkpoint.

As diffusers' Wan pipelines and schedulers define it: ``x_t = (1 - sigma) x_0 + sigma * noise``,
the transformer sees ``timestep = 1000 * sigma`` and predicts ``noise - x_0``. Every token
gets its own timestep (``expand_timesteps``); in an image-to-video row the first latent
frame is the clean latents of the first frame, its tokens get timestep 0 and no loss, which
is exactly what WanImageToVideoPipeline on a TI2V directory feeds the model. A share of the
rows drop their prompt for the empty one, so classifier-free guidance with the toy model's
default negative prompt ("") has an unconditional model to contrast with.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from engine.families.wan.traits import TEXT_MAX_LENGTH
from training.toy_world.architecture import ToyArchitecture, build_transformer
from engine.families.wan.compact_text_attention import compact_text_batch, install, uninstall
from training.toy_world.latent_dataset import LatentDataset
from training.toy_world.prompt_embeddings import PromptEmbeddings

UNCONDITIONAL_PROMPT = ""  # the toy model's default negative prompt


@dataclass(frozen=True)
class DitTrainingSettings:
    steps: int = 6000
    # Measured at 600 steps (validation loss over five noise levels): lr 5e-4 0.48, 1e-3 0.39,
    # 2e-3 0.32, 4e-3 0.28; batch 32 for half the steps 0.41 against batch 16's 0.32.
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    image_to_video_share: float = 0.25
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999
    # "shifted": uniform warped by the checkpoint's flow shift; "logit_normal": SD3's, centred on 0.5.
    sigma_sampling: str = "shifted"
    # Latent positions the objects cover weigh up to 1 + this in the loss (object_loss_weights):
    # the objects are a sixth of a clip's positions, and where they go is what the prompt's
    # motion decides, so with plain weights the easy background outweighs it. The checkpoint
    # trained without (6,000 steps) moved held-out objects diagonally, half the prompt's motion
    # and half a motion its colour and shape had in training (67 % colour+motion over 3 seeds).
    object_loss_weight: float = 3.0
    seed: int = 20261220


def train_dit(arch: ToyArchitecture, data: LatentDataset, prompts: PromptEmbeddings, settings: DitTrainingSettings,
              on_step: Callable[[int, dict[str, float]], None] = lambda step, losses: None):
    """The trained transformer: the exponential moving average of its weights, with Wan's own
    attention processors (the compact training one removed)."""
    transformer = build_transformer(arch).train()
    processors = install(transformer)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=settings.learning_rate, betas=(0.9, 0.99),
                                  weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.randperm(len(data.prompts), generator=generator)
    cursor = 0
    for step in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            order, cursor = torch.randperm(len(data.prompts), generator=generator), 0
        rows = order[cursor:cursor + settings.batch_size]
        cursor += settings.batch_size
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, settings)
        loss = _loss(transformer, processors, arch, data, prompts, rows, settings, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimizer.step()
        _update_ema(ema, transformer, min(settings.ema_decay, (1 + step) / (10 + step)))
        on_step(step, {"loss": loss.item(), "grad_norm": float(grad_norm), "lr": optimizer.param_groups[0]["lr"]})
    uninstall(ema)
    return ema


def _loss(transformer, processors, arch: ToyArchitecture, data: LatentDataset, prompts: PromptEmbeddings,
          rows: torch.Tensor, settings: DitTrainingSettings, generator: torch.Generator) -> torch.Tensor:
    clean = data.latents[rows]
    batch, _, frames, height, width = clean.shape
    noise = torch.randn(clean.shape, generator=generator)
    if settings.sigma_sampling == "logit_normal":
        sigma = torch.sigmoid(torch.randn(batch, generator=generator))
    else:
        sigma = shifted_sigmas(torch.rand(batch, generator=generator), arch.flow_shift)
    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * clean + sigma.view(-1, 1, 1, 1, 1) * noise
    # Image-to-video rows: the first latent frame is given, clean, at timestep 0.
    given = (torch.rand(batch, generator=generator) < settings.image_to_video_share).view(-1, 1, 1, 1, 1)
    first_frame = torch.zeros(1, 1, frames, 1, 1, dtype=torch.bool)
    first_frame[:, :, 0] = True
    kept = given & first_frame  # [B, 1, T, 1, 1]
    model_input = torch.where(kept, clean, noisy)
    tokens_per_frame = (height // 2) * (width // 2)
    timestep = (1000 * sigma).view(-1, 1).repeat(1, frames * tokens_per_frame)
    timestep[given.view(-1), :tokens_per_frame] = 0.0
    texts = [UNCONDITIONAL_PROMPT if torch.rand(1, generator=generator).item() < settings.prompt_dropout
             else data.prompts[int(row)] for row in rows]
    states, key_bias = compact_text_batch([prompts(text) for text in texts], TEXT_MAX_LENGTH)
    for processor in processors:
        processor.key_bias = key_bias
    predicted = transformer(hidden_states=model_input, timestep=timestep, encoder_hidden_states=states,
                            return_dict=False)[0]
    target = noise - clean
    weight = (~kept).float() * object_loss_weights(clean, settings.object_loss_weight)
    weight = weight.expand_as(target)
    return ((predicted - target).pow(2) * weight).sum() / weight.sum()


# Distances (over channels) of a normalised toy latent from its frame's background latent:
# the shipped VAE puts flat background at ~0.5 (up to ~1.5 at the clip's border) and an
# object's positions at 5-17 (measured on 16 training clips); the weight ramps between.
OBJECT_DISTANCE_FROM = 1.5
OBJECT_DISTANCE_FULL = 5.5


def object_loss_weights(clean: torch.Tensor, extra: float) -> torch.Tensor:
    """[B, 1, T, h, w] loss weights for normalised latents [B, C, T, h, w]: 1 on the background,
    up to ``1 + extra`` where an object is. A frame's background is the per-channel median over
    its positions (objects cover well under half of a frame)."""
    background = clean.flatten(-2).median(dim=-1).values[..., None, None]
    distance = (clean - background).norm(dim=1, keepdim=True)
    ramp = ((distance - OBJECT_DISTANCE_FROM) / (OBJECT_DISTANCE_FULL - OBJECT_DISTANCE_FROM)).clamp(0, 1)
    return 1 + extra * ramp


def shifted_sigmas(uniform: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-shift warp diffusers' flow schedulers apply: more of the training at high noise,
    where the scheduler spends most of its steps at inference."""
    return shift * uniform / (1 + (shift - 1) * uniform)


def _update_ema(ema, model, decay: float) -> None:
    with torch.no_grad():
        for averaged, current in zip(ema.parameters(), model.parameters()):
            averaged.lerp_(current, 1 - decay)


def _learning_rate(step: int, settings: DitTrainingSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
