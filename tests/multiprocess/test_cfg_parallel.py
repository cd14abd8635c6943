"""CFG parallelism (engine/parallel/cfg_parallel.py) on real gloo gangs, alone and under Ulysses.

A gang of 2 (``cfg 2``: Wan 2.1, LTX-Video and Wan 2.2 A14B's two experts) and a gang of 4
(``cfg 2 x sequence 2``) each run, per model, the row split on fixed batches against the
unsplit transformer, then the continuous-batching engine on rank 0 with the others
mirroring it: requests with and without guidance (so the two sides differ in rows, and
some steps leave the unconditional side empty), and on ``tiny`` step-cached requests
whose cached rows decide on the rank that computes them. Each must equal one rank. A gang
whose rank 1 dies mid-step fails that step and every later one, as every gang does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.parallel.cfg_parallel import DESCRIPTOR_BYTES, cfg_parallel_step_bytes
from engine.parallel.parallel_layout import ParallelLayout
from tests.support.cfg_parallel_ranks import CACHED_REQUESTS, LAYOUTS, REQUESTS, ROW_PATTERNS
from tests.support.repo import REPO_ROOT
from tests.support.serving_cluster import free_port

MODELS = {2: ("tiny", "tiny-ltx", "tiny-wan22-moe"), 4: ("tiny",)}


def _run_gang(world_size: int, scenario: str, models: tuple[str, ...], preset_specs, preset_cache, tmp_path):
    for model in models:  # built here once, not raced by the ranks
        preset_specs[model]
    output = tmp_path / "report"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    ranks = [
        subprocess.Popen([sys.executable, "-m", "tests.support.cfg_parallel_ranks", str(rank), str(world_size),
                          str(port), str(preset_cache), str(output), scenario, ",".join(models)],
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world_size)
    ]
    logs = [rank.communicate(timeout=580)[0] for rank in ranks]
    return [rank.returncode for rank in ranks], logs, output


@pytest.fixture(scope="module", params=sorted(MODELS), ids={2: "cfg2", 4: "cfg2xsp2"}.get)
def gang(request, preset_specs, preset_cache, tmp_path_factory):
    """Every rank's report from one gang of 2 (cfg) or 4 (cfg+sequence) processes."""
    world_size = request.param
    codes, logs, output = _run_gang(world_size, "gang", MODELS[world_size], preset_specs, preset_cache,
                                    tmp_path_factory.mktemp(f"cfg-gang-{world_size}"))
    assert codes == [0] * world_size, "\n\n".join(log[-3000:] for log in logs)
    reports = [json.loads(output.with_name(f"report.rank{rank}.json").read_text()) for rank in range(world_size)]
    return ParallelLayout.from_mode(LAYOUTS[world_size], world_size), reports


def test_the_row_split_gives_every_rank_the_unsplit_output(gang):
    layout, reports = gang
    for rank, report in enumerate(reports):
        cases = report["tiny/row-split"]
        assert len(cases) == 2 * len(ROW_PATTERNS)
        for case in cases:
            assert case["shape_matches"], (rank, case)
            assert case["max_abs_diff"] <= 1e-4, (rank, case)


def test_each_cfg_index_runs_its_own_side_only(gang):
    layout, reports = gang
    for rank, report in enumerate(reports):
        conditional_side = layout.cfg_index(rank) == 0
        for case in report["tiny/row-split"]:
            side = sum(1 for conditional in case["pattern"] if conditional == conditional_side)
            # One forward over exactly this side's rows, or none when the side is empty.
            assert case["rows_run"] == ([side] if side else []), (rank, case)


def test_logged_payload_matches_the_formula(gang):
    layout, reports = gang
    for rank, report in enumerate(reports):
        for case in report["tiny/row-split"]:
            assert case["logged_bytes"] == case["expected_bytes"], (rank, case)
            one_side_empty = all(case["pattern"])
            gathers = 1 + one_side_empty + (layout.sequence > 1 and case["side_rows"] > 0)
            assert case["logged_calls"]["all_gather"] == gathers, (rank, case)
            if layout.sequence > 1 and case["side_rows"]:
                assert case["logged_calls"]["all_to_all"] > 0  # Ulysses ran inside this cfg index
            else:
                assert "all_to_all" not in case["logged_calls"]


def test_the_engine_on_the_gang_matches_one_rank(gang):
    layout, reports = gang
    for model in MODELS[layout.degree]:
        result = reports[0][f"{model}/requests"]
        assert result["finished"] == sorted(f"r{index}" for index in range(len(REQUESTS))), model
        assert result["latent_max_abs_diff"] <= 1e-4, (model, result["latent_abs_diff"])
        assert result["frame_max_abs_diff"] <= 1, model
        assert max(result["batch_sizes"]) > 1, model  # requests really shared steps
        # Every step gathered across the cfg group, those with an empty side too.
        assert all(step_bytes > 0 for step_bytes in result["step_bytes"]), model
        if "moe" in model:  # both experts ran, each with its rows shared out
            assert result["experts_used"] == [0, 1], model


def test_step_cached_rows_decide_on_their_rank_and_match_one_rank(gang):
    layout, reports = gang
    result = reports[0]["tiny/step-cached"]
    names = [f"c{index}" for index in range(len(CACHED_REQUESTS))]
    assert result["finished"] == names
    assert max(result["batch_sizes"]) > 1
    assert result["latent_max_abs_diff"] <= 1e-4
    assert result["frame_max_abs_diff"] <= 1
    # The same steps were reused as alone on one rank: every cached row decided on one rank,
    # the conditional rows' (which finish() reports) on rank 0 itself.
    assert result["reused_steps"] == result["reused_steps_alone"]
    for name, (_, _, _, _, step_cache) in zip(names, CACHED_REQUESTS):
        if step_cache is None:
            assert result["reused_steps"][name] is None
        else:
            assert result["reused_steps"][name] > 0


def test_a_rank_dying_mid_step_fails_that_step_and_the_gang(preset_specs, preset_cache, tmp_path):
    codes, logs, output = _run_gang(2, "rank-dies", ("tiny",), preset_specs, preset_cache, tmp_path)
    assert codes == [0, 17], "\n\n".join(log[-3000:] for log in logs)
    report = json.loads(output.with_name("report.rank0.json").read_text())
    assert report["step_events"] > 0 and report["broken"]  # steps ran before the rank died
    # The step in flight and every step after it failed their requests instead of hanging.
    assert set(report["finished"]) | set(report["failed"]) == {f"r{index}" for index in range(len(REQUESTS))}
    assert report["failed"] and all("RankFailed" in reason for reason in report["failed"].values())
    assert "rank 0 failed during the step" in json.dumps(report["failed"])  # the gather that lost its peer
    assert "failed earlier" in json.dumps(report["failed"])  # later steps refused without collectives
    assert "RankFailed" in report["later_step"] and "failed earlier" in report["later_step"]


# --- the layout and the formula, no processes --------------------------------------------


def test_ranks_are_cfg_index_major_and_the_groups_cross():
    layout = ParallelLayout.from_mode("cfg+sequence", 4)
    assert (layout.cfg, layout.sequence, layout.degree, layout.mode) == (2, 2, 4, "cfg+sequence")
    assert [(layout.cfg_index(rank), layout.inner_index(rank)) for rank in range(4)] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert layout.inner_groups() == [[0, 1], [2, 3]]  # Ulysses inside each cfg index
    assert layout.cfg_groups() == [[0, 2], [1, 3]]  # the output gathered across them
    assert ParallelLayout.from_mode("cfg", 2) == ParallelLayout(cfg=2)
    assert ParallelLayout.from_mode("cfg+sequence", 8).sequence == 4


@pytest.mark.parametrize("mode,degree,message", [
    ("cfg", 4, "cfg alone splits over 2 ranks"),
    ("cfg+sequence", 3, "even number of ranks"),
    ("cfg+tensor", 4, "cfg 2 combines with sequence, not with tensor"),
    ("sequence+tensor", 4, "not both"),
    ("cfg+pipeline", 4, "parallel mode must be one of"),
])
def test_layouts_no_gang_can_run_are_refused_naming_parallel(mode, degree, message):
    with pytest.raises(ValueError, match=message) as refused:
        ParallelLayout.from_mode(mode, degree)
    assert "parallel" in str(refused.value)


def test_cfg_payload_is_the_larger_sides_output_rows():
    # Wan 2.1 14B at 1280x720, 81 frames: 75600 tokens of 16 x 1x2x2 output values, bf16.
    config = {"out_channels": 16, "in_channels": 16, "patch_size": (1, 2, 2)}
    row = 75600 * 64 * 2
    assert cfg_parallel_step_bytes(config, 1, 1, 75600, 2) == row
    assert cfg_parallel_step_bytes(config, 3, 1, 75600, 2) == 3 * row  # padded to the larger side
    assert cfg_parallel_step_bytes(config, 2, 0, 75600, 2) == 2 * row + DESCRIPTOR_BYTES
    # LTX: packed tokens of out_channels values (patch 1).
    assert cfg_parallel_step_bytes({"out_channels": 128, "patch_size": 1, "patch_size_t": 1}, 1, 1, 10, 4) == 10 * 128 * 4
