"""The colocated layout, served for real: each model's stages in one replica, the same outputs.

One application in ``layout: colocated`` serves Wan 2.1 (text-to-video), Wan 2.2 TI2V and
LTX-Video (both tasks each): each model is one ``Pipeline`` deployment whose replica
encodes, conditions, denoises and decodes on its engine's thread. Its ``frames`` must equal
diffusers' own pipeline for the same seed, as the disaggregated layout's do
(test_multi_model_serving.py); a step-cached job reports what it reused.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest

from engine.models.model_spec import Task
from engine.request_validation import validate_generation
from tests.support.diffusers_reference import diffusers_pipeline, reference
from tests.support.images import image_bytes
from tests.support.serving_cluster import deploy_models_app

pytestmark = pytest.mark.timeout(600)
APP = "colocated"
MODELS = ["tiny", "tiny-wan22-ti2v", "tiny-ltx"]
# (model, task, width, height, frames, steps, guidance)
JOBS = [
    ("tiny", "t2v", 48, 32, 9, 4, 5.0),
    ("tiny-wan22-ti2v", "t2v", 96, 64, 9, 4, 5.0),
    ("tiny-wan22-ti2v", "i2v", 64, 96, 5, 3, 5.0),
    ("tiny-ltx", "t2v", 96, 64, 9, 4, 3.0),
    ("tiny-ltx", "i2v", 64, 32, 5, 3, 3.0),
]
IMAGE = image_bytes(56, 40, seed=4)
PROMPT = "a red car at night"


@pytest.fixture(scope="module")
def colocated_app(ray_cluster, serve_port, preset_specs, tmp_path_factory):
    yield deploy_models_app(APP, MODELS, "colocated", serve_port, preset_specs,
                            tmp_path_factory.mktemp("colocated-state"))
    from ray import serve

    serve.delete(APP)


def _create(url: str, model: str, task: str, width: int, height: int, frames: int, steps: int, guidance: float,
            **extra) -> str:
    data = {"model": model, "prompt": PROMPT, "negative_prompt": "blurry", "size": f"{width}x{height}",
            "num_frames": str(frames), "num_inference_steps": str(steps), "guidance_scale": str(guidance),
            "seed": "33", **extra}
    files = {"input_reference": ("first.png", IMAGE, "image/png")} if task == "i2v" else None
    response = httpx.post(f"{url}/v1/videos", data=data, files=files, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _wait_completed(url: str, ids: list[str], timeout_s: float = 420) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        for video_id in list(pending):
            video = httpx.get(f"{url}/v1/videos/{video_id}").json()
            assert video["status"] != "failed", video
            if video["status"] == "completed":
                pending.remove(video_id)
        time.sleep(0.2)
    assert not pending, f"not completed in time: {pending}"


def test_each_model_is_one_pipeline_deployment(colocated_app):
    from ray import serve

    _, names = colocated_app
    assert set(serve.status().applications[APP].deployments) == set(names) == {
        "VideoAPI", "PostProcessor", *(f"Pipeline-{model}" for model in MODELS)}


def test_every_family_and_task_served_colocated_equals_diffusers(colocated_app, preset_specs):
    url, _ = colocated_app
    ids = {job: _create(url, *job) for job in JOBS}
    _wait_completed(url, list(ids.values()))
    for job, video_id in ids.items():
        model, task, width, height, frames, steps, guidance = job
        content = httpx.get(f"{url}/v1/videos/{video_id}/content", params={"variant": "frames"})
        served = np.load(io.BytesIO(content.content))
        spec = preset_specs[model]
        raw = {"prompt": PROMPT, "negative_prompt": "blurry", "width": width, "height": height, "num_frames": frames,
               "num_inference_steps": steps, "guidance_scale": guidance, "seed": 33}
        if task == "i2v":
            raw["image"] = IMAGE
        _, expected = reference(spec, diffusers_pipeline(spec, Task(task)), validate_generation(raw, spec))
        assert served.shape == expected.shape, job
        assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1, job


def test_a_step_cached_job_reports_its_policy_and_what_it_reused(colocated_app):
    url, _ = colocated_app
    cached = _create(url, "tiny", "t2v", 48, 32, 9, 12, 5.0, step_cache='{"policy": "taylorseer", "threshold": 0.3}')
    _wait_completed(url, [cached])
    report = httpx.get(f"{url}/v1/videos/{cached}").json()["step_cache"]
    assert report["policy"] == "taylorseer" and report["threshold"] == 0.3 and report["total_steps"] == 12
    assert 0 < report["reused_steps"] <= 12 - 3


def test_the_stage_metrics_are_the_same_as_disaggregated(colocated_app):
    from tests.support.served_metrics import metric_samples

    url, _ = colocated_app
    samples = metric_samples(url)
    latency = {dict(labels)["stage"]: value for (name, labels), value in samples.items()
               if name == "videoserve_stage_latency_seconds_count"}
    assert all(latency[stage] > 0 for stage in ("text_encoder", "image_conditioner", "denoiser", "vae_decoder"))
    replicas = {dict(labels)["stage"]: value for (name, labels), value in samples.items()
                if name == "videoserve_stage_replicas"}
    # The Pipeline replicas run the model stages: one per model here.
    assert replicas["denoiser"] == replicas["text_encoder"] == len(MODELS)
