"""Offline model presets: the real Wan classes with seeded random weights.

No weights can be downloaded here, so ``tiny``, ``tiny-i2v`` and ``bench`` are built
from the same diffusers/transformers classes as Wan 2.1, saved with
``save_pretrained`` into a cache directory on first use, and from then on loaded
through exactly the same ``from_pretrained`` path as a real checkpoint.

Weights are a pure function of (architecture, seed, torch version): every component is
constructed on the CPU in float32 right after ``torch.manual_seed``, so two machines
build byte-identical presets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.model_spec import GenerationDefaults, GenerationLimits, Task
from engine.preset_cache import build_once

# Bump when the construction below changes, so caches built by older code are not reused.
BUILDER_VERSION = 3
PRESET_METADATA_FILE = "videoserve.json"

# Wan 2.1's own default negative prompt (from the Wan repository's shared config).
WAN_DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，"
    "低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，"
    "形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

# The scheduler configuration the Wan 2.1 Diffusers checkpoints ship.
WAN_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    solver_order=2,
    solver_type="bh2",
    predict_x0=True,
    lower_order_final=True,
    final_sigmas_type="zero",
    timestep_spacing="linspace",
)


@dataclass(frozen=True)
class RandomWanArchitecture:
    """Sizes of every component of a random-weight Wan pipeline."""

    task: Task
    seed: int
    vocab_size: int
    text_dim: int
    text_layers: int
    text_heads: int
    text_d_kv: int
    text_d_ff: int
    num_attention_heads: int
    attention_head_dim: int
    ffn_dim: int
    num_layers: int
    vae_base_dim: int
    image_hidden_size: int = 4
    image_size: int = 32


@dataclass(frozen=True)
class BuiltinPreset:
    name: str
    description: str
    architecture: RandomWanArchitecture
    defaults: GenerationDefaults
    limits: GenerationLimits


_TINY_TEXT = dict(vocab_size=128, text_dim=32, text_layers=2, text_heads=2, text_d_kv=16, text_d_ff=64)
# 4 heads and an FFN width divisible by 4: the parallel DiT tests split them over 2 and 4 ranks.
_TINY_DIT = dict(num_attention_heads=4, attention_head_dim=12, ffn_dim=32, num_layers=2, vae_base_dim=3)
_TINY_LIMITS = GenerationLimits(min_size=16, max_size=256, min_frames=1, max_frames=33)


def _tiny_defaults(fps: int = 16) -> GenerationDefaults:
    return GenerationDefaults(
        width=32,
        height=32,
        num_frames=9,
        num_inference_steps=4,
        guidance_scale=5.0,
        fps=fps,
        flow_shift=3.0,
        negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
    )


BUILTIN_PRESETS: dict[str, BuiltinPreset] = {
    "tiny": BuiltinPreset(
        name="tiny",
        description="random-weight Wan 2.1 text-to-video, for tests and the offline demo",
        architecture=RandomWanArchitecture(task=Task.TEXT_TO_VIDEO, seed=20250101, **_TINY_TEXT, **_TINY_DIT),
        defaults=_tiny_defaults(),
        limits=_TINY_LIMITS,
    ),
    "tiny-i2v": BuiltinPreset(
        name="tiny-i2v",
        description="random-weight Wan 2.1 image-to-video, for tests",
        architecture=RandomWanArchitecture(task=Task.IMAGE_TO_VIDEO, seed=20250102, **_TINY_TEXT, **_TINY_DIT),
        defaults=_tiny_defaults(),
        limits=_TINY_LIMITS,
    ),
    # Sized so that one DiT forward at the default size costs ~50-200 ms on a 2-core CPU:
    # big enough that batching and scheduling effects are measurable, small enough to
    # load-test on a laptop.
    "bench": BuiltinPreset(
        name="bench",
        description="random-weight Wan 2.1 text-to-video sized for CPU load tests",
        architecture=RandomWanArchitecture(
            task=Task.TEXT_TO_VIDEO,
            seed=20250103,
            vocab_size=256,
            text_dim=64,
            text_layers=2,
            text_heads=4,
            text_d_kv=16,
            text_d_ff=128,
            num_attention_heads=4,
            attention_head_dim=64,
            ffn_dim=1024,
            num_layers=8,
            vae_base_dim=4,
        ),
        defaults=GenerationDefaults(
            width=128,
            height=128,
            num_frames=17,
            num_inference_steps=10,
            guidance_scale=5.0,
            fps=16,
            flow_shift=3.0,
            negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
        ),
        limits=GenerationLimits(min_size=16, max_size=512, min_frames=1, max_frames=49),
    ),
}


def builtin_preset_dir(name: str, cache_dir: Path) -> Path:
    """Return the preset's diffusers-format directory, building it on first use."""
    preset = BUILTIN_PRESETS[name]
    target = Path(cache_dir) / "presets" / f"{name}-v{BUILDER_VERSION}"
    return build_once(target, lambda directory: save_random_wan_pipeline(preset, directory), PRESET_METADATA_FILE)


def save_random_wan_pipeline(preset: BuiltinPreset, directory: Path) -> None:
    """Construct every component with seeded random weights and save_pretrained it."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    arch = preset.architecture
    image_to_video = arch.task is Task.IMAGE_TO_VIDEO

    torch.manual_seed(arch.seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=arch.vocab_size,
            d_model=arch.text_dim,
            d_kv=arch.text_d_kv,
            d_ff=arch.text_d_ff,
            num_layers=arch.text_layers,
            num_heads=arch.text_heads,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(arch.seed + 1)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=arch.num_attention_heads,
        attention_head_dim=arch.attention_head_dim,
        in_channels=36 if image_to_video else 16,
        out_channels=16,
        text_dim=arch.text_dim,
        freq_dim=256,
        ffn_dim=arch.ffn_dim,
        num_layers=arch.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        image_dim=arch.image_hidden_size if image_to_video else None,
        # As in Wan2.1-I2V: image tokens get their own key/value projections in cross-attention.
        added_kv_proj_dim=arch.num_attention_heads * arch.attention_head_dim if image_to_video else None,
    )
    torch.manual_seed(arch.seed + 2)
    vae = AutoencoderKLWan(
        base_dim=arch.vae_base_dim,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    scheduler = UniPCMultistepScheduler(flow_shift=preset.defaults.flow_shift, **WAN_SCHEDULER_CONFIG)
    components = dict(
        tokenizer=_build_tokenizer(arch.vocab_size),
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )
    if image_to_video:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(arch.seed + 3)
        image_encoder = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=arch.image_hidden_size,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=arch.image_size,
                intermediate_size=16,
                patch_size=1,
            )
        )
        image_processor = CLIPImageProcessor(crop_size=arch.image_size, size=arch.image_size)
        pipeline = WanImageToVideoPipeline(image_encoder=image_encoder, image_processor=image_processor, **components)
    else:
        pipeline = WanPipeline(**components)
    pipeline.save_pretrained(directory, safe_serialization=True)
    metadata = {
        "name": preset.name,
        "description": preset.description,
        "task": arch.task.value,
        "builder_version": BUILDER_VERSION,
        "defaults": asdict(preset.defaults),
        "limits": asdict(preset.limits),
    }
    (Path(directory) / PRESET_METADATA_FILE).write_text(json.dumps(metadata, indent=2, ensure_ascii=False))


def _build_tokenizer(vocab_size: int):
    """A Unigram tokenizer built in memory: whole words score above single characters."""
    import string

    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2 match UMT5's pad/eos ids
    characters = ["▁", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *".,!?'-:;()"]
    words = (
        "the a an of in on and with at to is cat dog city night sun sea sky car red blue green "
        "man woman walks runs flies street forest rain snow light camera slow motion close up "
        "wide shot video water fire tree house mountain river bird fish robot space star moon"
    ).split()
    pieces: list[tuple[str, float]] = [(token, 0.0) for token in specials]
    pieces += [(char, -5.0) for char in characters]
    pieces += [("▁" + word, -1.0) for word in words]
    pieces = pieces[:vocab_size]
    filler = 0
    while len(pieces) < vocab_size:
        pieces.append((f"▁w{filler}", -8.0))
        filler += 1
    return T5Tokenizer(vocab=pieces, extra_ids=0)
