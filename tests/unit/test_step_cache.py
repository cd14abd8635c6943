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


def test_the_two_policies_differ_on_a_skipped_step_reuse_against_extrapolation():
    cache = {name: RowCache(StepCacheOptions(policy=name, threshold=0.5)) for name in POLICIES}
    first = torch.ones(4)
    for row in cache.values():
        row.store(2, 0, first, torch.full((4,), 1.0))
        row.store(3, 0, first, torch.full((4,), 2.0))
        assert row.reuses(4, 10, 0, first * 1.01)
    assert torch.equal(cache["first_block"].estimate(4), torch.full((4,), 2.0))  # the last residual
    assert torch.equal(cache["taylorseer"].estimate(4), torch.full((4,), 3.0))  # one more step of its slope


def test_a_row_recomputes_when_its_expert_changes_and_on_the_last_step():
    row = RowCache(StepCacheOptions(threshold=1.0))
    first = torch.ones(4)
    row.store(2, 0, first, torch.zeros(4))
    assert row.reuses(3, 10, 0, first)  # same expert, nothing changed
    assert not row.reuses(3, 10, 1, first)  # the other expert: its residual was never stored
    assert not row.reuses(9, 10, 0, first)  # the last step always runs the whole transformer
    assert not row.reuses(1, 10, 0, first)  # nor the warm-up steps


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
    assert asked["step_cache"] == {"policy": "first_block", "threshold": 0.2, "reused_steps": None,
                                   "total_steps": 4}
    # A form (as OpenAI's SDK sends extra_body) carries the object as JSON text.
    form = api_client.post("/v1/videos", data={"prompt": PROMPT, "step_cache": '{"policy": "taylorseer"}'}).json()
    assert form["step_cache"]["policy"] == "taylorseer"
    # Absent: the server's default (here taylorseer); false: off.
    assert api_client.post("/v1/videos", json={"prompt": PROMPT}).json()["step_cache"]["policy"] == "taylorseer"
    assert api_client.post("/v1/videos", json={"prompt": PROMPT, "step_cache": False}).json()["step_cache"] is None
