"""The toy world model's components: real diffusers/transformers classes, sized for a 2-core CPU.

One Wan 2.2 TI2V-style checkpoint (``expand_timesteps``) serves both tasks, as diffusers'
``WanPipeline`` / ``WanImageToVideoPipeline`` do on a TI2V directory: text-to-video, and
image-to-video where the given first frame's latents replace the first latent frame and its
tokens get timestep 0. So one set of weights is ``toy`` for both.

- VAE: ``AutoencoderKLWan`` with 4x spatial and 4x temporal compression (64x64x17 frames ->
  16x16x5 latents) and a decoder half the encoder's width, trained on the toy clips.
- DiT: ``WanTransformer3DModel``, 2x2 patches (320 tokens a clip), trained by flow matching.
- Text: ``UMT5EncoderModel`` with frozen seeded random weights over a word-level vocabulary
  that covers the grammar; the DiT learns to read its outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.families.wan.random_checkpoint import WAN_SCHEDULER_CONFIG
from engine.toy_world.grammar import BACKGROUNDS, COLOURS, MOTIONS, SHAPES

# Every word of the grammar's prompts, each one token (other words fall back to characters).
GRAMMAR_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    ["a", *COLOURS, *SHAPES, *" ".join(MOTIONS).split(), "on", *BACKGROUNDS, "background", "and", "the"]
))


@dataclass(frozen=True)
class ToyArchitecture:
    # The clips it is made for.
    width: int = 64
    height: int = 64
    num_frames: int = 17
    fps: int = 8
    # Text encoder (frozen, random).
    text_seed: int = 20261201
    vocab_size: int = 128
    text_dim: int = 64
    text_layers: int = 2
    text_heads: int = 2
    text_d_kv: int = 32
    text_d_ff: int = 128
    # VAE.
    vae_seed: int = 20261202
    vae_base_dim: int = 16
    # The decoder runs once a request, after every denoising step: at the encoder's width (16)
    # it took a third of a request (0.34 s of 1.10 s on 2 cores), at 8 it takes 0.19 s, so the
    # denoising loop is most of a request's time, as in real video models.
    vae_decoder_base_dim: int = 8
    z_dim: int = 16
    # DiT.
    dit_seed: int = 20261203
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    ffn_dim: int = 512
    num_layers: int = 6
    flow_shift: float = 3.0


def build_tokenizer(arch: ToyArchitecture):
    from engine.models.random_tokenizer import build_tokenizer as build

    return build(arch.vocab_size, GRAMMAR_WORDS)


def build_text_encoder(arch: ToyArchitecture):
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(arch.text_seed)
    return UMT5EncoderModel(UMT5Config(
        vocab_size=arch.vocab_size, d_model=arch.text_dim, d_kv=arch.text_d_kv, d_ff=arch.text_d_ff,
        num_layers=arch.text_layers, num_heads=arch.text_heads, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0,
    )).eval()


def build_vae(arch: ToyArchitecture, latents_mean: list[float] | None = None, latents_std: list[float] | None = None):
    import torch
    from diffusers import AutoencoderKLWan

    torch.manual_seed(arch.vae_seed)
    # Three stages: two spatial halvings (4x), both also temporal (4x: 1 + 4k frames -> 1 + k).
    return AutoencoderKLWan(
        base_dim=arch.vae_base_dim, decoder_base_dim=arch.vae_decoder_base_dim, z_dim=arch.z_dim, dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True], scale_factor_spatial=4, scale_factor_temporal=4, is_residual=True,
        latents_mean=latents_mean or [0.0] * arch.z_dim, latents_std=latents_std or [1.0] * arch.z_dim,
    )


def build_transformer(arch: ToyArchitecture):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(arch.dit_seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=arch.num_attention_heads,
        attention_head_dim=arch.attention_head_dim, in_channels=arch.z_dim, out_channels=arch.z_dim,
        text_dim=arch.text_dim, freq_dim=256, ffn_dim=arch.ffn_dim, num_layers=arch.num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )


def build_scheduler(arch: ToyArchitecture):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(flow_shift=arch.flow_shift, **WAN_SCHEDULER_CONFIG)
