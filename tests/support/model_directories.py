"""Diffusers-format model directories built in the test from the real classes, with configs no preset uses.

They stand in for "a checkpoint someone hands us by path": other head counts and widths,
other (multistep) schedulers, other boundary ratios, a Wan VAE that compresses 4x in
space and 2x in time (so the size and frame rules differ from the presets'), a short
rotary table (so the size and frame limits do too), an LTX VAE with a spatial patch and
no timestep conditioning. Each is built by diffusers' own constructors and
``save_pretrained``, and loaded by path.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from engine.models.random_tokenizer import build_tokenizer

_FLOW = dict(prediction_type="flow_prediction", use_flow_sigmas=True)


def _umt5(seed: int, d_model: int = 24):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=128, d_model=d_model, d_kv=8, d_ff=48, num_layers=1, num_heads=3, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))


def _wan_transformer(seed: int, in_channels: int, out_channels: int, heads: int, head_dim: int, text_dim: int,
                     rope_max_seq_len: int = 1024, image_dim: int | None = None, layers: int = 1):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=out_channels, text_dim=text_dim, freq_dim=64, ffn_dim=40, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=rope_max_seq_len, image_dim=image_dim,
        added_kv_proj_dim=heads * head_dim if image_dim else None,
    )


def _wan21_vae(seed: int, small: bool = False):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    if small:  # three stages: 4x in space, 2x in time (the config says so, as diffusers reads it from there)
        return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1], num_res_blocks=1,
                                temperal_downsample=[False, True], scale_factor_spatial=4, scale_factor_temporal=2)
    return AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def build_wan21_t2v_small_vae(directory: Path) -> None:
    """Wan 2.1 T2V: 3 heads, DPM-Solver++ (multistep) with flow sigmas, a 4x/2x VAE, a 32-position rotary table."""
    from diffusers import DPMSolverMultistepScheduler, WanPipeline

    WanPipeline(
        tokenizer=build_tokenizer(128), text_encoder=_umt5(1), vae=_wan21_vae(2, small=True),
        transformer=_wan_transformer(3, 16, 16, heads=3, head_dim=12, text_dim=24, rope_max_seq_len=32),
        scheduler=DPMSolverMultistepScheduler(flow_shift=4.0, **_FLOW),
    ).save_pretrained(directory)


def build_wan21_i2v(directory: Path) -> None:
    """Wan 2.1 I2V: a 16-pixel CLIP of width 8, 2 heads of 16, UniPC of order 3."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(4)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                     image_size=16, intermediate_size=16, patch_size=2))
    WanImageToVideoPipeline(
        tokenizer=build_tokenizer(128), text_encoder=_umt5(5), vae=_wan21_vae(6),
        transformer=_wan_transformer(7, 36, 16, heads=2, head_dim=16, text_dim=24, image_dim=8),
        scheduler=UniPCMultistepScheduler(flow_shift=2.0, solver_order=3, **_FLOW),
        image_encoder=image_encoder, image_processor=CLIPImageProcessor(crop_size=16, size=16),
    ).save_pretrained(directory)


def build_wan22_moe_t2v(directory: Path) -> None:
    """Wan 2.2 A14B-style T2V: two experts of 2 heads, boundary 0.6, DPM-Solver++ with a 7.0 shift."""
    from diffusers import DPMSolverMultistepScheduler, WanPipeline

    WanPipeline(
        tokenizer=build_tokenizer(128), text_encoder=_umt5(8), vae=_wan21_vae(9),
        transformer=_wan_transformer(10, 16, 16, heads=2, head_dim=12, text_dim=24),
        transformer_2=_wan_transformer(11, 16, 16, heads=2, head_dim=12, text_dim=24),
        scheduler=DPMSolverMultistepScheduler(flow_shift=7.0, **_FLOW), boundary_ratio=0.6,
    ).save_pretrained(directory)


def build_wan22_moe_i2v(directory: Path) -> None:
    """Wan 2.2 A14B-style I2V: no image encoder, two experts of 3 heads, boundary 0.75, UniPC."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    WanImageToVideoPipeline(
        tokenizer=build_tokenizer(128), text_encoder=_umt5(12), vae=_wan21_vae(13),
        transformer=_wan_transformer(14, 36, 16, heads=3, head_dim=8, text_dim=24),
        transformer_2=_wan_transformer(15, 36, 16, heads=3, head_dim=8, text_dim=24),
        scheduler=UniPCMultistepScheduler(flow_shift=3.5, **_FLOW), boundary_ratio=0.75,
        image_encoder=None, image_processor=None,
    ).save_pretrained(directory)


def build_wan22_ti2v(directory: Path) -> None:
    """Wan 2.2 TI2V-style: the 16x residual VAE with its own statistics, 2 heads of 24, DPM-Solver++."""
    from diffusers import AutoencoderKLWan, DPMSolverMultistepScheduler, WanPipeline

    generator = torch.Generator().manual_seed(16)
    torch.manual_seed(17)
    vae = AutoencoderKLWan(
        base_dim=12, decoder_base_dim=12, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        scale_factor_spatial=16, scale_factor_temporal=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True], latents_mean=(torch.randn(48, generator=generator) * 0.3).tolist(),
        latents_std=(torch.rand(48, generator=generator) + 0.7).tolist(),
    )
    WanPipeline(
        tokenizer=build_tokenizer(128), text_encoder=_umt5(18), vae=vae,
        transformer=_wan_transformer(19, 48, 48, heads=2, head_dim=24, text_dim=24, layers=2),
        scheduler=DPMSolverMultistepScheduler(flow_shift=5.0, **_FLOW), expand_timesteps=True,
    ).save_pretrained(directory)


def build_ltx_unipc(directory: Path) -> None:
    """LTX-Video: UniPC (multistep) with a dynamic shift, a VAE with a 2x spatial patch and no decode timestep."""
    from diffusers import AutoencoderKLLTXVideo, LTXPipeline, LTXVideoTransformer3DModel, UniPCMultistepScheduler
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(20)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=128, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    ))
    torch.manual_seed(21)
    transformer = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                             num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                                             num_layers=1, caption_channels=16)
    torch.manual_seed(22)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, False, False, False),
        decoder_spatio_temporal_scaling=(True, False, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False, patch_size=2,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    # LTXPipeline derives mu from the token count with its own default shift range; UniPC applies it.
    scheduler = UniPCMultistepScheduler(use_dynamic_shifting=True, **_FLOW)
    LTXPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(128),
                transformer=transformer).save_pretrained(directory)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "wan21-t2v-small-vae": build_wan21_t2v_small_vae,
    "wan21-i2v": build_wan21_i2v,
    "wan22-moe-t2v": build_wan22_moe_t2v,
    "wan22-moe-i2v": build_wan22_moe_i2v,
    "wan22-ti2v": build_wan22_ti2v,
    "ltx-unipc": build_ltx_unipc,
}


def build_model_directory(name: str, root: Path) -> Path:
    directory = Path(root) / name
    if not (directory / "model_index.json").is_file():
        BUILDERS[name](directory)
    return directory
