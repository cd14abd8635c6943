"""Training clips drawn from the toy grammar: scenes, their prompts, and pixels as the VAE reads them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.toy_world.grammar import ToyScene, sample_scene, scene_to_prompt
from engine.toy_world.render import render_clip


@dataclass(frozen=True)
class TrainingClip:
    scene: ToyScene
    seed: int  # the renderer's: where the objects start and how big they are
    prompt: str


def draw_clips(count: int, seed: int, *, max_objects: int = 2) -> list[TrainingClip]:
    """``count`` clips of training scenes (never a held-out combination), reproducibly from ``seed``."""
    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        scene = sample_scene(rng, max_objects=max_objects, allow_held_out=False)
        clips.append(TrainingClip(scene, int(rng.integers(0, 2**31 - 1)), scene_to_prompt(scene)))
    return clips


def clip_pixels(clips: list[TrainingClip], width: int, height: int, num_frames: int):
    """The clips as the VAE takes video: float32 [B, 3, F, H, W] in [-1, 1] (diffusers' VideoProcessor range)."""
    import torch

    frames = np.stack([render_clip(clip.scene, seed=clip.seed, width=width, height=height, num_frames=num_frames)
                       for clip in clips])  # [B, F, H, W, 3] uint8
    pixels = torch.from_numpy(frames).permute(0, 4, 1, 2, 3).float()
    return pixels / 127.5 - 1.0
