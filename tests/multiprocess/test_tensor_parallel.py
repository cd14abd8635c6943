"""Tensor parallelism for WanTransformer3DModel on real gloo rank groups of 2 and 4 (and 3).

Each group runs every case in one set of processes (see tests/support/tensor_parallel_ranks.py):
a batch of three rows with different timesteps (a CFG step of two requests) through
the sharded transformer on every rank, against the unsharded transformer on rank 0.
"""

from __future__ import annotations

import pytest
import torch

from engine.parallel.tensor_parallel import check_tensor_parallel_degree, tensor_parallel_step_bytes
from tests.support.rank_processes import result_path
from tests.support.tensor_parallel_ranks import (
    BATCH_ROWS,
    LATENT_FRAMES_HEIGHT_WIDTH,
    TEXT_TOKENS,
    ModelCase,
    run_ranks,
)

DEGREES = (2, 4)
# tiny-i2v feeds its CLIP tokens to attn2 as extra text (it has no added k/v projections);
# "i2v-added-kv" is shaped like Wan 2.1 I2V, whose attn2 has add_k_proj/add_v_proj.
# "t2v-bf16" is the GPU dtype: its row-parallel all-reduces carry bf16, the norm statistics fp32.
CASE_NAMES = ("t2v", "i2v", "i2v-added-kv", "t2v-bf16")
# fp32 must match to 1e-4; bf16 partial sums are rounded before the all-reduce adds them,
# so allow a few bf16 ulps at the output's magnitude (~2): the unsharded bf16 model
# itself is 1e-2 away from fp32.
TOLERANCE = {"t2v-bf16": {"atol": 5e-2, "rtol": 2e-2}}
FP32_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
# Which dimension of each checked parameter is split across ranks; None: replicated.
SHARD_DIM = {
    "blocks.0.attn1.to_q.weight": 0,
    "blocks.0.attn1.to_q.bias": 0,
    "blocks.0.attn1.to_out.0.weight": 1,
    "blocks.0.attn1.to_out.0.bias": None,
    "blocks.0.attn1.norm_q.weight": 0,
    "blocks.0.attn2.to_k.weight": 0,
    "blocks.0.attn2.norm_k.weight": 0,
    "blocks.0.ffn.net.0.proj.weight": 0,
    "blocks.0.ffn.net.2.weight": 1,
    "proj_out.weight": None,
    "blocks.0.attn2.add_k_proj.weight": 0,
    "blocks.0.attn2.norm_added_k.weight": 0,
}


@pytest.fixture(scope="module", params=DEGREES, ids=lambda degree: f"N{degree}")
def group_results(request, tiny_spec, tiny_i2v_spec, tmp_path_factory):
    """Per degree: results[case][rank], from one rank group running every case."""
    degree = request.param
    out_dir = tmp_path_factory.mktemp(f"tensor-parallel-{degree}")
    cases = [
        ModelCase("t2v", tiny_spec),
        ModelCase("i2v", tiny_i2v_spec, with_image=True),
        ModelCase("i2v-added-kv", tiny_i2v_spec, {"added_kv_proj_dim": 48}, with_image=True),
        ModelCase("t2v-bf16", tiny_spec, dtype="bfloat16"),
        ModelCase("ffn-indivisible", tiny_spec, {"ffn_dim": 33}),
    ]
    run_ranks(degree, cases, out_dir)
    results = {case.name: [torch.load(result_path(out_dir, case.name, rank)) for rank in range(degree)]
               for case in cases}
    return degree, results


@pytest.mark.parametrize("case", CASE_NAMES)
def test_sharded_output_equals_single_rank_output(group_results, case):
    _, results = group_results
    ranks = results[case]
    reference = ranks[0]["reference"]
    assert reference.shape == (BATCH_ROWS, 16, *LATENT_FRAMES_HEIGHT_WIDTH)
    # Rows differ (different timesteps and text), so a mix-up between rows would show.
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)
    for rank in ranks:
        torch.testing.assert_close(rank["output"], reference, **TOLERANCE.get(case, FP32_TOLERANCE))
    # Every rank returns the same full output, so every rank's scheduler steps alike.
    for rank in ranks[1:]:
        assert torch.equal(rank["output"], ranks[0]["output"])


@pytest.mark.parametrize("case", CASE_NAMES)
def test_logged_bytes_equal_formula_and_real_collectives(group_results, case):
    degree, results = group_results
    for rank in results[case]:
        config = rank["config"]
        frames, height, width = LATENT_FRAMES_HEIGHT_WIDTH
        p_t, p_h, p_w = config["patch_size"]
        tokens = (frames // p_t) * (height // p_h) * (width // p_w)
        expected = tensor_parallel_step_bytes(config, BATCH_ROWS, tokens, TEXT_TOKENS, rank["image_tokens"],
                                              rank["dtype_bytes"], degree)
        assert rank["logged_bytes"] == {"all_reduce": expected}
        # Per block: three row-parallel outputs, attn1 q/k norms, attn2 q/k norms, and the
        # added-k norm where attn2 has one.
        calls_per_block = 7 + (config["added_kv_proj_dim"] is not None)
        assert rank["logged_calls"] == {"all_reduce": config["num_layers"] * calls_per_block}
        # What the dispatcher saw: only all-reduces, exactly the logged payload.
        assert rank["collective_bytes"] == {"all_reduce": expected}
        assert rank["collective_calls"] == rank["logged_calls"]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_each_rank_holds_one_nth_of_the_sharded_weights(group_results, case):
    degree, results = group_results
    ranks = results[case]
    full = ranks[0]["full_parameters"]
    if case == "i2v-added-kv":
        assert "blocks.0.attn2.add_k_proj.weight" in full
    for name, full_parameter in full.items():
        shards = [rank["local_parameters"][name] for rank in ranks]
        dim = SHARD_DIM[name]
        if dim is None:
            for shard in shards:
                assert torch.equal(shard, full_parameter), name
            continue
        expected_shape = list(full_parameter.shape)
        expected_shape[dim] //= degree
        for shard in shards:
            assert list(shard.shape) == expected_shape, name
        # Rank r holds the r-th slice: together the shards are the whole weight.
        assert torch.equal(torch.cat(shards, dim=dim), full_parameter), name
    heads = ranks[0]["config"]["num_attention_heads"]
    for rank in ranks:
        assert rank["heads"] == [heads // degree] * (2 * ranks[0]["config"]["num_layers"])


def test_ffn_width_not_divisible_is_refused(group_results):
    degree, results = group_results
    for rank in results["ffn-indivisible"]:
        assert rank["refusal"] == f"tensor parallel degree {degree} must divide ffn_dim=33"
        assert rank["untouched"] and rank["heads"] == [4, 4]


def test_heads_not_divisible_are_refused_on_three_ranks(tiny_spec, tmp_path):
    run_ranks(3, [ModelCase("t2v", tiny_spec)], tmp_path)
    for rank in range(3):
        result = torch.load(result_path(tmp_path, "t2v", rank))
        assert result["refusal"] == "tensor parallel degree 3 must divide num_attention_heads=4 and ffn_dim=32"
        assert result["untouched"] and result["heads"] == [4, 4]


WAN_14B = {"num_attention_heads": 40, "attention_head_dim": 128, "ffn_dim": 13824, "num_layers": 40, "image_dim": 1280}


def test_step_bytes_formula_for_wan_14b():
    # 480p, 81 frames: 21 x 60 x 104 latents -> 21 x 30 x 52 tokens; bf16; CFG doubles the rows.
    tokens = 21 * 30 * 52
    per_block = 3 * 2 * tokens * 5120 * 2 + 2 * (3 * tokens + 512 + 257) * 4
    assert tensor_parallel_step_bytes(WAN_14B, 2, tokens, 512, 257, dtype_bytes=2, degree=4) == 40 * per_block
    # The payload per rank does not shrink with more ranks; a single rank sends nothing.
    assert tensor_parallel_step_bytes(WAN_14B, 2, tokens, 512, 257, 2, degree=8) == 40 * per_block
    assert tensor_parallel_step_bytes(WAN_14B, 2, tokens, 512, 257, 2, degree=1) == 0


def test_indivisible_degree_names_the_fields():
    with pytest.raises(ValueError, match=r"degree 7 must divide num_attention_heads=40 and ffn_dim=13824$"):
        check_tensor_parallel_degree(WAN_14B, 7)
    with pytest.raises(ValueError, match=r"degree 16 must divide num_attention_heads=40$"):
        tensor_parallel_step_bytes(WAN_14B, 1, 10, 512, 0, 2, degree=16)
    with pytest.raises(ValueError, match="image_tokens=257 but the model has no image conditioning"):
        tensor_parallel_step_bytes({**WAN_14B, "image_dim": None}, 1, 10, 512, 257, 2, degree=2)
