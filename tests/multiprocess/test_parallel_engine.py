"""The continuous-batching engine on a gang of 2 and 4 ranks equals one rank.

Real processes joined in a gloo group (the CPU stand-in for NCCL, same code path): rank 0
runs the engine with staggered arrivals, mixed sizes (one uneven over the ranks), step
counts and guidance scales; the others mirror it through step messages. Both parallel
modes, text- and image-to-video; on 2 ranks also Wan 2.2 A14B's two experts (both split,
requests crossing the boundary at different steps) and TI2V's per-token timesteps with
text- and image-to-video requests in one gang. One request caches steps (engine/step_cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.repo import REPO_ROOT
from tests.support.parallel_engine_ranks import REQUESTS
from tests.support.serving_cluster import free_port


WAN21 = ("tiny", "tiny-i2v")
WAN22 = ("tiny-wan22-moe", "tiny-wan22-moe-i2v", "tiny-wan22-ti2v")


@pytest.mark.parametrize("world_size,models", [(2, WAN21 + WAN22), (4, WAN21)], ids=["N2", "N4"])
def test_parallel_engine_matches_one_rank(world_size, models, preset_specs, preset_cache, tmp_path):
    for model in models:  # built here once, not raced by the ranks
        preset_specs[model]
    output = tmp_path / "report.json"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    ranks = [
        subprocess.Popen([sys.executable, "-m", "tests.support.parallel_engine_ranks", str(rank), str(world_size), str(port),
                          str(preset_cache), str(output), ",".join(models)], cwd=REPO_ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world_size)
    ]
    logs = [rank.communicate(timeout=540)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n\n".join(log[-3000:] for log in logs)
    report = json.loads(output.read_text())
    assert set(report) == {f"{model}/{mode}" for model in models for mode in ("tensor", "sequence")}
    for case, result in report.items():
        assert result["finished"] == sorted(f"r{index}" for index in range(len(REQUESTS))), case
        assert result["latent_max_abs_diff"] <= 1e-4, case
        assert result["frame_max_abs_diff"] <= 1, case
        assert max(result["batch_sizes"]) > 1, case  # requests really shared steps
        # Every step moved data between the ranks, and the log saw it, but for steps where every
        # row skipped every block (r0's magcache step cache while alone in a step): tensor
        # parallelism then has nothing to reduce.
        silent_steps = sum(step_bytes == 0 for step_bytes in result["step_bytes"])
        assert silent_steps <= (result["reused_steps"]["r0"] if case.endswith("tensor") else 0), case
        assert silent_steps < len(result["step_bytes"]), case
        if "moe" in case:  # both experts ran, each split over the ranks
            assert result["experts_used"] == [0, 1], case
        # r0 caches steps: every rank of the gang made the same decisions, the ones one rank makes.
        assert result["reused_steps"] == result["reused_steps_alone"], case
        if "moe" not in case:  # (4 steps: on a two-expert model its reusable step falls on the switch)
            assert result["reused_steps"]["r0"] > 0 and result["reused_steps"]["r4"] > 0, case


def test_requests_started_while_steps_run_reach_every_rank_of_a_gang(preset_specs, preset_cache, tmp_path):
    """Adds are queued to the engine's step thread, so none can slip between a step message
    being built and the executor forgetting what it sent (the race of the locked engine)."""
    from tests.support.async_engine_ranks import REQUESTS as REQUEST_COUNT

    preset_specs["tiny"]
    output = tmp_path / "report.json"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    ranks = [
        subprocess.Popen([sys.executable, "-m", "tests.support.async_engine_ranks", str(rank), "2", str(port),
                          str(preset_cache), str(output)], cwd=REPO_ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    logs = [rank.communicate(timeout=300)[0] for rank in ranks]
    assert all(rank.returncode == 0 for rank in ranks), "\n\n".join(log[-3000:] for log in logs)
    report = json.loads(output.read_text())
    expected = sorted(f"r{index}" for index in range(REQUEST_COUNT))
    assert report["finished"] == expected
    assert report["sent_to_peers"] == expected
    assert report["unsent_batch_members"] == []
    assert max(report["batch_sizes"]) > 1  # requests joined running batches
    assert report["latent_max_abs_diff"] <= 1e-4
    # Starts, releases and steps all ran on the engine's step thread, never on the caller's.
    assert report["executor_threads"] == 1
    assert report["executor_on_event_loop_thread"] is False
