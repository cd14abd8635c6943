"""The Wan denoiser's cross-attention over real text positions plus one for the padding: the same
forward as over diffusers' 512 zero-padded positions, and actually in use where it applies."""

from __future__ import annotations

import math

import pytest
import torch

from engine.families.wan.compact_text_attention import (
    KEY_BIAS_INPUT,
    CompactPaddingAttnProcessor,
    compact_padded_text,
    install,
    uninstall,
)
from engine.request_validation import validate_generation


def _padded_rows(lengths: list[int], full: int = 512, width: int = 8, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    states = torch.zeros(len(lengths), full, width)
    for row, length in enumerate(lengths):
        states[row, :length] = torch.randn(length, width, generator=generator)
    return states


def test_padded_rows_become_their_real_positions_and_one_weighted_padding_slot():
    states = _padded_rows([3, 7, 0, 512])
    compact, bias = compact_padded_text(states)
    assert compact.shape == (4, 513, 8) and bias.shape == (4, 1, 1, 513)
    for row, length in enumerate([3, 7, 0, 512]):
        assert torch.equal(compact[row, :length], states[row, :length])
        assert torch.all(compact[row, length:] == 0)
        assert torch.all(bias[row, 0, 0, :length] == 0)
        assert torch.all(bias[row, 0, 0, length:-1] == -math.inf)
        expected_padding = math.log(512 - length) if length < 512 else -math.inf
        assert bias[row, 0, 0, -1].item() == pytest.approx(expected_padding)
    short, short_bias = compact_padded_text(_padded_rows([2, 5]))
    assert short.shape[1] == 6 and short_bias[0, 0, 0, 2:5].eq(-math.inf).all()


def test_a_zero_inside_the_prompt_is_kept_only_the_trailing_zeros_are_padding():
    states = _padded_rows([6])
    states[0, 2] = 0.0  # a real position that happens to be zero stays a real position
    compact, bias = compact_padded_text(states)
    assert compact.shape[1] == 7 and torch.all(bias[0, 0, 0, :6] == 0)


def _transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                                 out_channels=4, text_dim=8, freq_dim=32, ffn_dim=32, num_layers=3,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64).eval()


def test_the_compact_forward_equals_the_512_position_forward():
    transformer = _transformer()
    states = _padded_rows([4, 11, 1, 512], seed=3)
    latents = torch.randn(4, 4, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    timestep = torch.tensor([999.0, 500.0, 20.0, 250.0])
    with torch.no_grad():
        full = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=states, return_dict=False)[0]
        compact, bias = compact_padded_text(states)
        for processor in install(transformer):
            processor.key_bias = bias
        compacted = transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=compact,
                                return_dict=False)[0]
        uninstall(transformer)
    torch.testing.assert_close(compacted, full, rtol=1e-5, atol=1e-5)


def test_the_bias_follows_the_rows_a_partial_call_runs():
    transformer = _transformer()
    states = _padded_rows([4, 9, 2], seed=5)
    latents = torch.randn(3, 4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    timestep = torch.tensor([900.0, 400.0, 100.0])
    running: list[int] | None = None
    with torch.no_grad():
        full = transformer(hidden_states=latents[[0, 2]], timestep=timestep[[0, 2]],
                           encoder_hidden_states=states[[0, 2]], return_dict=False)[0]
        compact, bias = compact_padded_text(states)
        for processor in install(transformer, rows=lambda: running):
            processor.key_bias = bias  # the whole batch's bias, as a step sets it
        running = [0, 2]  # as step caching's later blocks run only the rows that recompute
        partial = transformer(hidden_states=latents[[0, 2]], timestep=timestep[[0, 2]],
                              encoder_hidden_states=compact[[0, 2]], return_dict=False)[0]
    torch.testing.assert_close(partial, full, rtol=1e-5, atol=1e-5)


def test_the_wan_denoiser_compacts_text_models_and_leaves_image_embed_models_alone(preset_pipelines):
    text_only = preset_pipelines["tiny"].denoiser
    assert text_only._text_processors is not None
    assert all(isinstance(block.attn2.processor, CompactPaddingAttnProcessor) for block in text_only.transformer.blocks)
    request = validate_generation({"prompt": "a red fox", "negative_prompt": "", "seed": 1}, text_only.spec)
    pipeline = preset_pipelines["tiny"]
    state = text_only.start(pipeline.denoise_task(request))
    inputs = text_only._batched_inputs([state], guided=[0])
    assert KEY_BIAS_INPUT in inputs
    assert inputs["encoder_hidden_states"].shape[1] < text_only.spec.geometry.text_max_length
    # Wan 2.1 image-to-video: the cross-attention also holds CLIP image tokens, which diffusers
    # splits off by the count of 512 text positions: left as diffusers runs it.
    with_image = preset_pipelines["tiny-i2v"].denoiser
    assert with_image._text_processors is None
    assert not any(isinstance(block.attn2.processor, CompactPaddingAttnProcessor)
                   for block in with_image.transformer.blocks)
