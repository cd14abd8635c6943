"""Per-request step caching inside batched steps (engine/step_cache), on the tiny presets.

Batch invariance with cached and uncached requests mixed is in test_batch_invariance.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.request_validation import RequestValidationError, validate_generation
from engine.step_cache.options import POLICIES, StepCacheOptions, parse_step_cache
from engine.step_cache.row_cache import RowCache

PROMPT = "a red circle moves up on a black background"


def _latents(pipeline, steps: int = 12, **fields):
    request = validate_generation({"prompt": PROMPT, "seed": 4, "num_inference_steps": steps, **fields},
                                  pipeline.spec)
    return pipeline.denoiser.denoise(pipeline.denoise_task(request))


@pytest.mark.parametrize("value,field", [
    ({"policy": "teacache-ultra"}, "step_cache.policy"),
    ({"policy": 3}, "step_cache.policy"),
    ({"threshold": 0}, "step_cache.threshold"),
    ({"threshold": -0.1}, "step_cache.threshold"),
    ({"threshold": 1.5}, "step_cache.threshold"),
    ({"threshold": math.nan}, "step_cache.threshold"),
    ({"threshold": "high"}, "step_cache.threshold"),
    ({"interval": 3}, "step_cache.interval"),
    ("fast", "step_cache"),
    (7, "step_cache"),
])
def test_a_bad_option_is_refused_naming_the_field(tiny_spec, value, field):
    with pytest.raises(RequestValidationError) as refused:
        validate_generation({"prompt": PROMPT, "step_cache": value}, tiny_spec)
    assert refused.value.field == field


def test_true_is_the_default_policy_false_is_off_and_absent_is_the_apps_default():
    assert parse_step_cache(True) == StepCacheOptions()
    assert parse_step_cache(False, StepCacheOptions()) is None
    app_default = StepCacheOptions(policy="taylorseer", threshold=0.2)
    assert parse_step_cache(None, app_default) == app_default
    assert parse_step_cache({"policy": "taylorseer"}).threshold == POLICIES["taylorseer"].default_threshold


@pytest.mark.parametrize("model", ["tiny", "tiny-wan22-ti2v", "tiny-ltx"])
def test_a_cache_that_never_skips_gives_the_uncached_output_exactly(preset_pipelines, model):
    pipeline = preset_pipelines[model]
    uncached = _latents(pipeline)
    never = _latents(pipeline, step_cache={"threshold": 1e-12})
    assert never.reused_steps == 0 and uncached.reused_steps is None
    assert torch.equal(never.latents, uncached.latents)


@pytest.mark.parametrize("model", ["tiny", "tiny-wan22-ti2v", "tiny-ltx"])
@pytest.mark.parametrize("policy", list(POLICIES))
def test_a_loose_threshold_reuses_steps_and_stays_close_to_the_uncached_output(preset_pipelines, model, policy):
    pipeline = preset_pipelines[model]
    uncached = _latents(pipeline).latents
    cached = _latents(pipeline, step_cache={"policy": policy, "threshold": 0.3})
    # Never the first two steps (nothing to compare with) or the last.
    assert 0 < cached.reused_steps <= 12 - 3
    assert torch.isfinite(cached.latents).all()
    relative = (cached.latents - uncached).norm() / uncached.norm()
    assert 0 < relative < 0.5


def test_the_two_first_block_policies_differ_on_a_skipped_step_reuse_against_extrapolation():
    cache = {name: RowCache(StepCacheOptions(policy=name, threshold=0.5)) for name in ("first_block", "taylorseer")}
    first = torch.ones(4)
    for row in cache.values():
        row.store(2, 0, first, torch.full((4,), 1.0))
        row.store(3, 0, first, torch.full((4,), 2.0))
        assert row.reuses(4, 10, 0, first * 1.01)
    assert torch.equal(cache["first_block"].estimate(4), torch.full((4,), 2.0))  # the last residual
    assert torch.equal(cache["taylorseer"].estimate(4), torch.full((4,), 3.0))  # one more step of its slope


def test_a_row_recomputes_when_its_expert_changes_and_on_the_last_step():
    row = RowCache(StepCacheOptions(policy="first_block", threshold=1.0))
    first = torch.ones(4)
    row.store(2, 0, first, torch.zeros(4))
    assert row.reuses(3, 10, 0, first)  # same expert, nothing changed
    assert not row.reuses(3, 10, 1, first)  # the other expert: its residual was never stored
    assert not row.reuses(9, 10, 0, first)  # the last step always runs the whole transformer
    assert not row.reuses(1, 10, 0, first)  # nor the warm-up steps


def _magcache_row(threshold: float, magnitudes: list[float]) -> RowCache:
    row = RowCache(StepCacheOptions(policy="magcache", threshold=threshold))
    for step, magnitude in enumerate(magnitudes):
        row.store(step, 0, None, torch.full((4,), float(step)), magnitude)
    return row


def test_magcache_skips_every_block_at_most_twice_in_a_row_and_never_early_or_last():
    # Equal magnitudes predict no change: only the schedule's limits stop a skip.
    row = _magcache_row(1.0, [2.0, 2.0, 2.0, 2.0])
    assert row.skips_whole_transformer
    assert not row.reuses_before_blocks(3, 20, 0)  # the first fifth of 20 steps always runs
    assert row.reuses_before_blocks(4, 20, 0) and torch.equal(row.estimate(4), torch.full((4,), 3.0))
    assert row.reuses_before_blocks(5, 20, 0) and torch.equal(row.estimate(5), torch.full((4,), 3.0))
    assert not row.reuses_before_blocks(6, 20, 0)  # a third skip in a row
    row.store(6, 0, None, torch.zeros(4), 2.0)
    assert row.reuses_before_blocks(7, 20, 0)  # a full step starts the count again
    assert not row.reuses_before_blocks(7, 20, 1)  # the other expert's residual was never stored
    assert not row.reuses_before_blocks(19, 20, 0)  # the last step always runs
    assert row.reused_steps == 2


def test_magcache_skips_while_the_error_its_magnitude_ratio_predicts_stays_under_the_threshold():
    # The magnitude fell 10 % a step: skipping one step predicts an error of 0.1, two 0.1 + 0.19.
    for threshold, decisions in ((0.2, [True, False]), (0.3, [True, True]), (0.09, [False, False])):
        row = _magcache_row(threshold, [1.0, 1.0, 1.0, 1.0, 0.9])
        assert [row.reuses_before_blocks(step, 20, 0) for step in (5, 6)] == decisions, threshold
    # Between full steps further apart the ratio is per step: 0.81 over two steps is 0.9 a step.
    row = _magcache_row(0.15, [1.0, 1.0, 1.0, 1.0])
    row.store(6, 0, None, torch.zeros(4), 0.81)
    assert row.reuses_before_blocks(7, 20, 0) and not row.reuses_before_blocks(8, 20, 0)


def _rows_entering_blocks(pipeline, step_cache) -> tuple[list[int], list[int], list]:
    """Two requests stepped together, the first with ``step_cache``: how many rows entered the
    first and the last block at each step, and each request's final latents."""
    requests = [validate_generation({"prompt": PROMPT, "seed": seed, "num_inference_steps": 12,
                                     "guidance_scale": 4.0, **extra}, pipeline.spec, request_id=f"r{seed}")
                for seed, extra in ((1, {"step_cache": step_cache}), (2, {}))]
    states = [pipeline.denoiser.start(pipeline.denoise_task(request)) for request in requests]
    blocks = pipeline.denoiser.caching_blocks[0]
    first, last = [], []

    def counter(per_step: list[int]):
        def count(module, args, kwargs):
            per_step[-1] += (args[0] if args else kwargs["hidden_states"]).shape[0]
        return count

    handles = [blocks[0].register_forward_pre_hook(counter(first), with_kwargs=True),
               blocks[len(blocks) - 1].register_forward_pre_hook(counter(last), with_kwargs=True)]
    try:
        while not states[0].finished:
            first.append(0)
            last.append(0)
            pipeline.denoiser.step(states)
    finally:
        for handle in handles:
            handle.remove()
    return first, last, [pipeline.denoiser.finish(state) for state in states]


def test_a_magcache_row_that_skips_runs_no_block_while_its_batch_neighbour_runs_them_all(preset_pipelines):
    pipeline = preset_pipelines["tiny"]
    first, last, (cached, uncached) = _rows_entering_blocks(pipeline, {"policy": "magcache", "threshold": 1.0})
    skipped = cached.reused_steps
    assert skipped > 0
    # Four rows a step (two requests, each with its unconditional row); a skipped step leaves
    # out the cached request's conditional and unconditional rows from the first block too.
    assert first == last
    assert sorted(set(first)) == [2, 4] and first.count(2) == skipped
    alone = _latents(pipeline, seed=2, guidance_scale=4.0).latents
    # The uncached neighbour got what it gets alone (batch invariance's tolerance).
    torch.testing.assert_close(uncached.latents, alone, rtol=1e-4, atol=1e-4)
    # A first-block policy still runs the first block on every row.
    first, last, (cached, _) = _rows_entering_blocks(pipeline, {"policy": "first_block", "threshold": 1.0})
    assert cached.reused_steps > 0 and set(first) == {4} and last.count(2) == cached.reused_steps


def test_a_two_expert_model_never_reuses_across_its_boundary(preset_pipelines):
    pipeline = preset_pipelines["tiny-wan22-moe"]
    request = validate_generation({"prompt": PROMPT, "seed": 2, "num_inference_steps": 14, "guidance_scale": 4.0,
                                   "step_cache": {"threshold": 1.0}}, pipeline.spec)
    state = pipeline.denoiser.start(pipeline.denoise_task(request))
    switch = state.experts.index(1)
    reused_at = []
    while not state.finished:
        before = state.row_caches[True].reused_steps
        pipeline.denoiser.step([state])
        if state.row_caches[True].reused_steps > before:
            reused_at.append(state.steps_done - 1)
    assert reused_at and switch not in reused_at
    assert any(step < switch for step in reused_at) and any(step > switch for step in reused_at)


@pytest.fixture
def api_client(tmp_path, tiny_spec):
    from fastapi.testclient import TestClient

    from serve.api.routes import create_api
    from serve.app_config import AppConfig
    from serve.artifact_store import ArtifactStore
    from serve.jobs.open_store import open_job_store
    from serve.metrics import VideoServeMetrics
    from serve.video_service import VideoService

    config = AppConfig(storage={"state_dir": str(tmp_path)}, denoiser={"step_cache": {"policy": "taylorseer"}})
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {})
    api = create_api()
    api.state.service = VideoService(config, {tiny_spec.name: tiny_spec}, store,
                                     ArtifactStore(config.storage.resolved_artifact_dir()), metrics, runner=None,
                                     expander_enabled=False)
    with TestClient(api) as client:
        yield client


@pytest.mark.parametrize("step_cache,param", [({"policy": "nope"}, "step_cache.policy"),
                                              ({"threshold": 2}, "step_cache.threshold"),
                                              ({"policy": "first_block", "extra": 1}, "step_cache.extra")])
def test_the_api_answers_400_naming_the_step_cache_field(api_client, step_cache, param):
    response = api_client.post("/v1/videos", json={"prompt": PROMPT, "step_cache": step_cache})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_the_video_object_says_which_policy_a_job_runs(api_client):
    asked = api_client.post("/v1/videos", json={"prompt": PROMPT, "step_cache": {"threshold": 0.2}}).json()
    assert asked["step_cache"] == {"policy": "magcache", "threshold": 0.2, "reused_steps": None,
                                   "total_steps": 4}
    # A form (as OpenAI's SDK sends extra_body) carries the object as JSON text.
    form = api_client.post("/v1/videos", data={"prompt": PROMPT, "step_cache": '{"policy": "taylorseer"}'}).json()
    assert form["step_cache"]["policy"] == "taylorseer"
    # Absent: the server's default (here taylorseer); false: off.
    assert api_client.post("/v1/videos", json={"prompt": PROMPT}).json()["step_cache"]["policy"] == "taylorseer"
    assert api_client.post("/v1/videos", json={"prompt": PROMPT, "step_cache": False}).json()["step_cache"] is None
