"""Random-weight LTX-Video checkpoints from the real diffusers/transformers classes (see wan/random_checkpoint.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.models.random_tokenizer import build_tokenizer

# LTX-Video's published scheduler: flow-match Euler with a shift that follows the token count.
LTX_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
)


@dataclass(frozen=True)
class RandomLTXArchitecture:
    text_seed: int
    dit_seed: int
    vae_seed: int
    vocab_size: int = 128
    text_dim: int = 32
    latent_channels: int = 8
    num_attention_heads: int = 4
    attention_head_dim: int = 8
    num_layers: int = 2
    vae_channels: int = 8
    # LTX 0.9.1+ VAEs take a decode timestep and mix noise into the latents first.
    timestep_conditioning: bool = True


def save_random_ltx_pipeline(arch: RandomLTXArchitecture, directory: Path) -> None:
    import torch
    from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(arch.text_seed)
    text_encoder = T5EncoderModel(T5Config(
        vocab_size=arch.vocab_size, d_model=arch.text_dim, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    torch.manual_seed(arch.dit_seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=arch.latent_channels, out_channels=arch.latent_channels, patch_size=1, patch_size_t=1,
        num_attention_heads=arch.num_attention_heads, attention_head_dim=arch.attention_head_dim,
        cross_attention_dim=arch.num_attention_heads * arch.attention_head_dim, num_layers=arch.num_layers,
        caption_channels=arch.text_dim,
    )
    torch.manual_seed(arch.vae_seed)
    width = arch.vae_channels
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=arch.latent_channels,
        block_out_channels=(width,) * 4, decoder_block_out_channels=(width,) * 4,
        layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
        # Two of four blocks scale: 4x in space and time (LTX-Video's own VAE is 32x / 8x).
        spatio_temporal_scaling=(True, True, False, False), decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        timestep_conditioning=arch.timestep_conditioning, patch_size=1, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    )
    # Non-trivial latent statistics, so normalising and un-normalising is exercised.
    generator = torch.Generator().manual_seed(arch.vae_seed)
    vae.latents_mean.copy_(torch.randn(arch.latent_channels, generator=generator) * 0.5)
    vae.latents_std.copy_(torch.rand(arch.latent_channels, generator=generator) + 0.5)
    pipeline = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER_CONFIG),
        vae=vae, text_encoder=text_encoder, tokenizer=build_tokenizer(arch.vocab_size), transformer=transformer,
    )
    pipeline.save_pretrained(directory, safe_serialization=True)
