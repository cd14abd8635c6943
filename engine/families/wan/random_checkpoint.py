"""Random-weight Wan checkpoints (2.1, 2.2 A14B two-expert, 2.2 TI2V) from the real diffusers/transformers classes.

Weights are a pure function of (architecture, seeds, torch version): every component is
constructed on the CPU in float32 right after its own ``torch.manual_seed``, so two
machines build byte-identical checkpoints, and two presets that give a component the
same seed and sizes share it byte for byte, as the real Wan checkpoints share their
UMT5 encoder and (2.1 and A14B) their VAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.models.model_spec import Task
from engine.models.random_tokenizer import build_tokenizer

# The scheduler configuration the Wan Diffusers checkpoints ship.
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
    """Sizes and seeds of every component of a random-weight Wan pipeline."""

    task: Task
    text_seed: int
    dit_seed: int
    vae_seed: int
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
    image_seed: int = 0
    image_hidden_size: int = 4
    image_size: int = 32
    # Wan 2.1 I2V conditions on CLIP image embeds; Wan 2.2 A14B I2V has no image encoder.
    image_encoder: bool = True
    # "2.1": 8x spatial, z_dim 16. "2.2": TI2V-5B's 16x residual VAE with z_dim 48 and its own latent statistics.
    vae: str = "2.1"
    boundary_ratio: float | None = None  # two experts (Wan 2.2 A14B)
    expand_timesteps: bool = False  # per-token timesteps (Wan 2.2 TI2V)


def save_random_wan_pipeline(arch: RandomWanArchitecture, flow_shift: float, directory: Path) -> None:
    """Construct every component with seeded random weights and save_pretrained it."""
    import torch
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline

    image_to_video = arch.task is Task.IMAGE_TO_VIDEO
    vae = _random_vae(arch)
    channels = vae.config.z_dim
    # Wan 2.1 / A14B image-to-video: the first-frame mask (4 channels) and latents ride along as input channels.
    in_channels = channels + 4 + channels if image_to_video and not arch.expand_timesteps else channels
    experts = [_random_transformer(arch, arch.dit_seed + 100 * expert, in_channels, channels)
               for expert in range(1 if arch.boundary_ratio is None else 2)]
    components = dict(
        tokenizer=build_tokenizer(arch.vocab_size),
        text_encoder=_random_text_encoder(arch),
        transformer=experts[0],
        vae=vae,
        scheduler=UniPCMultistepScheduler(flow_shift=flow_shift, **WAN_SCHEDULER_CONFIG),
    )
    if len(experts) == 2:
        components.update(transformer_2=experts[1], boundary_ratio=arch.boundary_ratio)
    if arch.expand_timesteps:
        components["expand_timesteps"] = True
    if not image_to_video:
        WanPipeline(**components).save_pretrained(directory, safe_serialization=True)
        return
    image_encoder = image_processor = None
    if arch.image_encoder:
        from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

        torch.manual_seed(arch.image_seed)
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
    pipeline.save_pretrained(directory, safe_serialization=True)


def _random_text_encoder(arch: RandomWanArchitecture):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(arch.text_seed)
    return UMT5EncoderModel(
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


def _random_transformer(arch: RandomWanArchitecture, seed: int, in_channels: int, out_channels: int):
    import torch
    from diffusers import WanTransformer3DModel

    image_embeds = arch.task is Task.IMAGE_TO_VIDEO and arch.image_encoder and not arch.expand_timesteps
    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=arch.num_attention_heads,
        attention_head_dim=arch.attention_head_dim,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=arch.text_dim,
        freq_dim=256,
        ffn_dim=arch.ffn_dim,
        num_layers=arch.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
        image_dim=arch.image_hidden_size if image_embeds else None,
        # As in Wan2.1-I2V: image tokens get their own key/value projections in cross-attention.
        added_kv_proj_dim=arch.num_attention_heads * arch.attention_head_dim if image_embeds else None,
    )


def _random_vae(arch: RandomWanArchitecture):
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(arch.vae_seed)
    if arch.vae == "2.1":
        return AutoencoderKLWan(base_dim=arch.vae_base_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True, True])
    if arch.vae != "2.2":
        raise ValueError(f"vae must be '2.1' or '2.2' (got {arch.vae!r})")
    z_dim = 48
    # Wan 2.2's VAE normalises with per-channel statistics; seeded ones exercise that path.
    generator = torch.Generator().manual_seed(arch.vae_seed)
    latents_mean = (torch.randn(z_dim, generator=generator) * 0.5).tolist()
    latents_std = (torch.rand(z_dim, generator=generator) + 0.5).tolist()
    return AutoencoderKLWan(
        base_dim=arch.vae_base_dim, decoder_base_dim=arch.vae_base_dim, z_dim=z_dim, in_channels=12, out_channels=12,
        is_residual=True, patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4, dim_mult=[1, 1, 1, 1],
        num_res_blocks=1, temperal_downsample=[False, True, True], latents_mean=latents_mean, latents_std=latents_std,
    )
