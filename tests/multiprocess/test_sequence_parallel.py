"""Ulysses sequence parallelism (engine/parallel/sequence_parallel.py) on real gloo groups.

One group of real processes per degree (2 and 4) runs every model: text-to-video
(``tiny``), image-to-video (``tiny-i2v``) and a Wan 2.1-style image-to-video model with
added k/v projections, each on a CFG-style batch of three rows with different timesteps
at token counts 12 (even), 27 (padded over 2 and 4) and 1 (fewer tokens than ranks).
Every rank's output must equal the unsplit model's, and the logged payload must equal
both the formula and what the dispatcher saw.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.parallel.sequence_parallel import sequence_parallel_step_bytes
from tests.support.rank_processes import result_path
from tests.support.sequence_parallel_ranks import BATCH_ROWS, ModelCase, run_ranks

DEGREES = (2, 4)
FP32_BYTES = 4


def _cases(tiny_spec, tiny_i2v_spec, ti2v_spec) -> list[ModelCase]:
    return [
        ModelCase("t2v", tiny_spec),
        ModelCase("i2v", tiny_i2v_spec, with_image=True),
        # Wan 2.1 I2V attends to the image tokens through attn2's own add_k/add_v projections.
        ModelCase("i2v-added-kv", tiny_i2v_spec, config_changes={"added_kv_proj_dim": 48}, with_image=True),
        # Wan 2.2 TI2V modulates every token by its own timestep: each rank embeds its tokens' only.
        ModelCase("ti2v-per-token-timesteps", ti2v_spec, per_token_timesteps=True),
    ]


@pytest.fixture(scope="module", params=DEGREES, ids=lambda degree: f"N{degree}")
def group_results(request, tiny_spec, tiny_i2v_spec, preset_specs, tmp_path_factory):
    """Each case's saved results, per rank, from one group of ``N`` processes."""
    degree = request.param
    out_dir = tmp_path_factory.mktemp(f"sequence-parallel-{degree}")
    cases = _cases(tiny_spec, tiny_i2v_spec, preset_specs["tiny-wan22-ti2v"])
    run_ranks(degree, cases, out_dir)
    results = {case.name: [torch.load(result_path(out_dir, case.name, rank), weights_only=False)
                           for rank in range(degree)] for case in cases}
    return degree, results


def _case_names() -> list[str]:
    return ["t2v", "i2v", "i2v-added-kv", "ti2v-per-token-timesteps"]


@pytest.mark.parametrize("case_name", _case_names())
def test_every_rank_returns_the_single_rank_output(group_results, case_name):
    degree, results = group_results
    references = results[case_name][0]["references"]
    for rank, result in enumerate(results[case_name]):
        for step, reference in zip(result["steps"], references):
            assert step["output"].shape == reference.shape
            assert step["output"].shape[0] == BATCH_ROWS
            where = f"rank {rank}/{degree}, latent {step['latent_size']}"
            torch.testing.assert_close(step["output"], reference, atol=1e-4, rtol=1e-4,
                                       msg=lambda mismatch, where=where: f"{where}: {mismatch}")


@pytest.mark.parametrize("case_name", _case_names())
def test_blocks_run_on_this_ranks_chunk_only(group_results, case_name):
    degree, results = group_results
    for result in results[case_name]:
        for step in result["steps"]:
            assert step["tokens_in_last_block"] == math.ceil(step["tokens"] / degree)


@pytest.mark.parametrize("case_name", _case_names())
def test_logged_payload_matches_formula_and_dispatcher(group_results, case_name):
    degree, results = group_results
    for result in results[case_name]:
        config = result["config"]
        for step in result["steps"]:
            expected = sequence_parallel_step_bytes(config, BATCH_ROWS, step["tokens"], FP32_BYTES, degree)
            assert sum(step["logged_bytes"].values()) == expected
            # q, k, v and the output of every block's self-attention, then one gather.
            assert step["logged_calls"] == {"all_to_all": 4 * config["num_layers"], "all_gather": 1}
            # What DeepSpeed and torch.distributed actually handed to gloo.
            assert step["collective_bytes"] == {"alltoall_base_": step["logged_bytes"]["all_to_all"],
                                                "allgather_": step["logged_bytes"]["all_gather"]}
            assert step["collective_calls"] == {"alltoall_base_": 4 * config["num_layers"], "allgather_": 1}


def test_splitting_twice_is_refused(group_results):
    _, results = group_results
    for result in results["t2v"]:
        assert "WanAttnProcessor" in result["second_split_refusal"]


def test_payload_per_rank_shrinks_with_the_degree():
    # Wan 2.1 14B at 1280x720, 81 frames: 21 x 45 x 80 = 75600 tokens, bf16, a CFG pair.
    config = {"num_attention_heads": 40, "attention_head_dim": 128, "num_layers": 40, "out_channels": 16,
              "in_channels": 16, "patch_size": (1, 2, 2)}
    per_rank = {degree: sequence_parallel_step_bytes(config, 2, 75600, 2, degree) for degree in (1, 2, 4, 8)}
    assert per_rank[1] == (40 * 4 * 2 * 75600 * 5120 + 2 * 75600 * 64) * 2
    assert per_rank[2] == per_rank[1] // 2
    assert per_rank[8] == per_rank[1] // 8
    with pytest.raises(ValueError, match=r"num_attention_heads=40 .*N=3"):
        sequence_parallel_step_bytes(config, 2, 75600, 2, 3)


def test_heads_not_divisible_by_ranks_are_refused(tiny_spec, tmp_path):
    run_ranks(3, [ModelCase("t2v", tiny_spec)], tmp_path)
    for rank in range(3):
        result = torch.load(result_path(tmp_path, "t2v", rank), weights_only=False)
        assert "num_attention_heads=4" in result["refusal"] and "N=3" in result["refusal"]
        assert result["untouched"], "a refused split must leave the model as it was"
