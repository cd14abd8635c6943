"""Writing the trained toy model as a diffusers-format directory, loadable by ``from_pretrained``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from engine.models.builtin_presets import PRESET_METADATA_FILE
from engine.models.model_spec import GenerationDefaults
from engine.prompt_grammars import TOY_WORLD
from training.toy_world.architecture import ToyArchitecture, build_scheduler
from training.toy_world.dit_training import UNCONDITIONAL_PROMPT

# What a request that leaves them out gets: the size, length and frame rate it was trained
# on, and the steps and guidance of the evaluation in benchmarks/RESULTS.md.
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


def toy_defaults(arch: ToyArchitecture) -> GenerationDefaults:
    return GenerationDefaults(width=arch.width, height=arch.height, num_frames=arch.num_frames,
                              num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE, fps=arch.fps,
                              flow_shift=arch.flow_shift, negative_prompt=UNCONDITIONAL_PROMPT)


def save_toy_checkpoint(directory: Path, arch: ToyArchitecture, *, tokenizer, text_encoder, transformer, vae,
                        description: str, training: dict) -> None:
    """A Wan 2.2 TI2V-layout ``WanPipeline`` directory (both tasks) plus videoserve's metadata file."""
    from diffusers import WanPipeline

    pipeline = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                           scheduler=build_scheduler(arch), expand_timesteps=True)
    pipeline.save_pretrained(directory, safe_serialization=True)
    metadata = {"name": "toy", "description": description, "defaults": asdict(toy_defaults(arch)),
                "prompt_grammar": TOY_WORLD, "architecture": asdict(arch), "training": training}
    (Path(directory) / PRESET_METADATA_FILE).write_text(json.dumps(metadata, indent=2))
