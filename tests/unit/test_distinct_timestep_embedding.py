"""Per-token timestep embeddings once per distinct timestep: the same outputs as diffusers'
per-token embedding (within float rounding), from far fewer rows through the time MLP."""

from __future__ import annotations

import torch

from engine.families.wan import distinct_timestep_embedding


def _transformer():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64).eval()


def _inputs(rows: int = 4):
    generator = torch.Generator().manual_seed(1)
    tokens = 3 * 4 * 4  # 3 latent frames of 8x8 in 2x2 patches
    timestep = torch.tensor([900.0, 412.5, 900.0, 412.5])[:rows, None].repeat(1, tokens)
    timestep[1, :16] = 0.0  # an image-to-video row: its first frame's tokens are given
    return {"hidden_states": torch.randn(rows, 4, 3, 8, 8, generator=generator), "timestep": timestep,
            "encoder_hidden_states": torch.randn(rows, 7, 32, generator=generator)}


def _time_mlp_rows(transformer) -> list[int]:
    seen: list[int] = []
    transformer.condition_embedder.time_embedder.register_forward_hook(
        lambda module, args, output: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    return seen


def test_outputs_equal_the_per_token_embedding_from_one_row_per_distinct_timestep():
    transformer = _transformer()
    inputs = _inputs()
    rows_embedded = _time_mlp_rows(transformer)
    with torch.no_grad():
        per_token = transformer(**inputs, return_dict=False)[0]
        distinct_timestep_embedding.install(transformer)
        distinct = transformer(**inputs, return_dict=False)[0]
    assert rows_embedded == [4 * 48, 3]  # every token's timestep, then only 900, 412.5 and 0
    assert torch.allclose(distinct, per_token, atol=1e-5), (distinct - per_token).abs().max()


def test_one_timestep_a_row_and_uninstall_are_diffusers_own_path():
    transformer = _transformer()
    inputs = {**_inputs(), "timestep": torch.tensor([900.0, 412.5, 900.0, 412.5])}
    with torch.no_grad():
        before = transformer(**inputs, return_dict=False)[0]
        distinct_timestep_embedding.install(transformer)
        distinct_timestep_embedding.install(transformer)  # idempotent
        assert distinct_timestep_embedding.is_installed(transformer)
        state_keys = list(transformer.state_dict())
        same_path = transformer(**inputs, return_dict=False)[0]
        distinct_timestep_embedding.uninstall(transformer)
        assert not distinct_timestep_embedding.is_installed(transformer)
        after = transformer(**inputs, return_dict=False)[0]
    assert torch.equal(same_path, before) and torch.equal(after, before)
    assert state_keys == list(transformer.state_dict())  # checkpoints save and load as before


def test_the_served_ti2v_denoiser_embeds_distinct_timesteps_unless_asked_not_to(preset_specs):
    from engine.families.wan.denoiser import WanDenoiser

    toy_spec = preset_specs["tiny-wan22-ti2v"]
    assert all(distinct_timestep_embedding.is_installed(t) for t in WanDenoiser(toy_spec).transformers)
    assert not any(distinct_timestep_embedding.is_installed(t)
                   for t in WanDenoiser(toy_spec, distinct_timesteps=False).transformers)
