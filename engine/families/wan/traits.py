"""Wan 2.1 / 2.2 checkpoints: geometry, limits, tasks and defaults from their config files.

Everything is read the way diffusers' WanPipeline / WanImageToVideoPipeline read it:
the VAE's ``scale_factor_spatial`` / ``scale_factor_temporal``, the transformer's patch
size and rotary range, and ``boundary_ratio`` / ``expand_timesteps`` from
model_index.json (Wan 2.2's two experts and per-token timesteps).
"""

from __future__ import annotations

from engine.families.config_reading import config_value, shift_key, size_rule
from engine.families.family import CheckpointTraits
from engine.models.model_spec import GenerationDefaults, GenerationLimits, LatentGeometry, Task

# Wan 2.1's own default negative prompt (from the Wan repository's shared config), which
# Wan 2.2's model cards use too.
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

WAN_PIPELINES = {
    # expand_timesteps (TI2V) adds image-to-video to a WanPipeline directory: see tasks_of.
    "WanPipeline": frozenset({Task.TEXT_TO_VIDEO}),
    "WanImageToVideoPipeline": frozenset({Task.IMAGE_TO_VIDEO}),
}
# WanPipeline's and WanImageToVideoPipeline's check_inputs refuse other sizes.
PIPELINE_SIZE_MULTIPLE = 16
TEXT_MAX_LENGTH = 512  # their max_sequence_length


def tasks_of(model_index: dict) -> frozenset[Task]:
    """Wan 2.2 TI2V (expand_timesteps) runs both tasks from one directory, as diffusers does."""
    if model_index.get("expand_timesteps"):
        return frozenset({Task.TEXT_TO_VIDEO, Task.IMAGE_TO_VIDEO})
    return WAN_PIPELINES[model_index["_class_name"]]


def read_traits(source: str, model_index: dict) -> CheckpointTraits:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    vae = AutoencoderKLWan.load_config(source, subfolder="vae")
    transformer = WanTransformer3DModel.load_config(source, subfolder="transformer")
    scheduler = UniPCMultistepScheduler.load_config(source, subfolder="scheduler")
    spatial = int(config_value(AutoencoderKLWan, vae, "scale_factor_spatial"))
    temporal = int(config_value(AutoencoderKLWan, vae, "scale_factor_temporal"))
    patch = tuple(config_value(WanTransformer3DModel, transformer, "patch_size"))
    rope_range = int(config_value(WanTransformer3DModel, transformer, "rope_max_seq_len"))
    multiple, rule = size_rule(PIPELINE_SIZE_MULTIPLE, "diffusers' Wan pipelines", spatial, patch[1:])
    limits = GenerationLimits(
        size_multiple=multiple,
        size_rule=rule,
        frame_step=temporal,
        # The rotary table covers rope_max_seq_len positions per axis.
        max_size=rope_range * min(patch[1:]) * spatial,
        max_frames=(rope_range * patch[0] - 1) * temporal + 1,
    )
    geometry = LatentGeometry(
        latent_channels=int(config_value(AutoencoderKLWan, vae, "z_dim")),
        temporal_factor=temporal,
        spatial_factor=spatial,
        patch_size=patch,
        text_max_length=TEXT_MAX_LENGTH,
    )
    boundary_ratio = model_index.get("boundary_ratio")
    key = shift_key(scheduler)
    defaults = published_defaults(model_index, None if key is None else float(scheduler[key]))
    components = {
        "text_encoder": ("text_encoder", "tokenizer"),
        "image_conditioner": tuple(name for name in ("image_encoder", "image_processor", "vae")
                                   if (model_index.get(name) or [None])[0] is not None),
        "denoiser": ("transformer", "transformer_2", "scheduler") if boundary_ratio is not None
        else ("transformer", "scheduler"),
        "vae_decoder": ("vae",),
    }
    return CheckpointTraits(
        tasks=tasks_of(model_index),
        geometry=geometry,
        limits=limits,
        defaults=defaults,
        boundary_ratio=None if boundary_ratio is None else float(boundary_ratio),
        stage_components=components,
    )


def published_defaults(model_index: dict, flow_shift: float | None) -> GenerationDefaults:
    """The settings Wan's model cards and diffusers' examples use for a checkpoint of this kind."""
    image_to_video = model_index["_class_name"] == "WanImageToVideoPipeline"
    if model_index.get("expand_timesteps"):  # Wan 2.2 TI2V-5B
        return GenerationDefaults(width=1280, height=704, num_frames=121, num_inference_steps=50, guidance_scale=5.0,
                                  fps=24, flow_shift=flow_shift, negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)
    if model_index.get("boundary_ratio") is not None:  # Wan 2.2 A14B
        guidance, guidance_2 = (3.5, 3.5) if image_to_video else (4.0, 3.0)
        return GenerationDefaults(width=1280, height=720, num_frames=81, num_inference_steps=40,
                                  guidance_scale=guidance, guidance_scale_2=guidance_2, fps=16,
                                  flow_shift=flow_shift, negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)
    # Wan 2.1: 720p when its scheduler is configured for 720p (flow_shift 5), else 480p.
    width, height = (1280, 720) if (flow_shift or 0) >= 5.0 else (832, 480)
    return GenerationDefaults(width=width, height=height, num_frames=81, num_inference_steps=50, guidance_scale=5.0,
                              fps=16, flow_shift=flow_shift, negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)
