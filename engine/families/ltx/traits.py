"""LTX-Video checkpoints: geometry, limits, tasks and defaults from their config files.

LTXPipeline and LTXImageToVideoPipeline load the same directory, so either class name
gives both tasks. The VAE's compression ratios are computed as AutoencoderKLLTXVideo
computes them; diffusers' check_inputs refuses sizes that are not multiples of 32.
"""

from __future__ import annotations

from engine.families.config_reading import config_value, shift_key, size_rule
from engine.families.family import CheckpointTraits
from engine.models.model_spec import GenerationDefaults, GenerationLimits, LatentGeometry, Task

BOTH_TASKS = frozenset({Task.TEXT_TO_VIDEO, Task.IMAGE_TO_VIDEO})
LTX_PIPELINES = {"LTXPipeline": BOTH_TASKS, "LTXImageToVideoPipeline": BOTH_TASKS}
PIPELINE_SIZE_MULTIPLE = 32
TEXT_MAX_LENGTH = 128  # LTXPipeline's max_sequence_length
# Lightricks' recommended negative prompt for LTX-Video.
LTX_DEFAULT_NEGATIVE_PROMPT = "worst quality, inconsistent motion, blurry, jittery, distorted"


def vae_compression(vae_config: dict) -> tuple[int, int]:
    """(spatial, temporal) compression, as AutoencoderKLLTXVideo.__init__ derives them."""
    from diffusers import AutoencoderKLLTXVideo

    def value(name):
        return config_value(AutoencoderKLLTXVideo, vae_config, name)

    scalings = sum(bool(flag) for flag in value("spatio_temporal_scaling"))
    spatial = value("spatial_compression_ratio") or value("patch_size") * 2**scalings
    temporal = value("temporal_compression_ratio") or value("patch_size_t") * 2**scalings
    return int(spatial), int(temporal)


def read_traits(source: str, model_index: dict) -> CheckpointTraits:
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

    vae = AutoencoderKLLTXVideo.load_config(source, subfolder="vae")
    transformer = LTXVideoTransformer3DModel.load_config(source, subfolder="transformer")
    scheduler = FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler")
    spatial, temporal = vae_compression(vae)
    patch = int(config_value(LTXVideoTransformer3DModel, transformer, "patch_size"))
    patch_t = int(config_value(LTXVideoTransformer3DModel, transformer, "patch_size_t"))
    if patch_t != 1:
        raise ValueError(f"{source}: LTX transformers with patch_size_t={patch_t} are not supported (only 1)")
    multiple, rule = size_rule(PIPELINE_SIZE_MULTIPLE, "diffusers' LTX pipelines", spatial, (patch, patch))
    # LTX computes its rotary embedding from coordinates: no table bounds the size or length.
    limits = GenerationLimits(size_multiple=multiple, size_rule=rule, frame_step=temporal)
    geometry = LatentGeometry(
        latent_channels=int(config_value(LTXVideoTransformer3DModel, transformer, "in_channels")),
        temporal_factor=temporal,
        spatial_factor=spatial,
        patch_size=(patch_t, patch, patch),
        text_max_length=TEXT_MAX_LENGTH,
    )
    key = shift_key(scheduler)
    defaults = GenerationDefaults(
        # LTX-Video's model card: 704x480, 161 frames; LTXPipeline's own frame rate, steps and guidance.
        width=704, height=480, num_frames=161, num_inference_steps=50, guidance_scale=3.0, fps=25,
        flow_shift=None if key is None else float(scheduler[key]),
        negative_prompt=LTX_DEFAULT_NEGATIVE_PROMPT,
    )
    return CheckpointTraits(
        tasks=BOTH_TASKS,
        geometry=geometry,
        limits=limits,
        defaults=defaults,
        stage_components={
            "text_encoder": ("text_encoder", "tokenizer"),
            "image_conditioner": ("vae",),
            "denoiser": ("transformer", "scheduler"),
            "vae_decoder": ("vae",),
        },
    )
