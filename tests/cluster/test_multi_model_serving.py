"""Several models in one served app: every family and task, on a real Ray Serve cluster.

One application serves Wan 2.1 (T2V, I2V), Wan 2.2 A14B-style two-expert models (T2V,
I2V), Wan 2.2 TI2V (both tasks from one model) and LTX-Video (both tasks). The stages
whose weights are byte-identical (the tiny Wan models' UMT5 encoder, the Wan 2.1 VAE
of 2.1 and A14B) are deployed once; each model has its own Denoiser. Every model and
task's served ``frames`` variant must equal diffusers' own pipeline for the same seed,
with the jobs of every family running at once; requests are routed by ``model``; bad
input names its field.
"""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
import pytest

from engine.models.model_spec import Task
from engine.request_validation import validate_generation
from tests.support.images import image_bytes
from tests.support.serving_cluster import deploy_models_app
from tests.support.diffusers_reference import diffusers_pipeline, reference

pytestmark = pytest.mark.timeout(600)
APP = "multi"
MODELS = ["tiny", "tiny-i2v", "tiny-wan22-moe", "tiny-wan22-moe-i2v", "tiny-wan22-ti2v", "tiny-ltx"]
# (model, task, width, height, frames, steps, guidance, guidance_2)
JOBS = [
    ("tiny", "t2v", 48, 32, 9, 4, 5.0, None),
    ("tiny-i2v", "i2v", 32, 48, 5, 3, 4.0, None),
    ("tiny-wan22-moe", "t2v", 48, 32, 9, 6, 4.0, 2.5),
    ("tiny-wan22-moe-i2v", "i2v", 64, 32, 5, 6, 3.5, 2.0),
    ("tiny-wan22-ti2v", "t2v", 96, 64, 9, 4, 5.0, None),
    ("tiny-wan22-ti2v", "i2v", 64, 96, 5, 3, 5.0, None),
    ("tiny-ltx", "t2v", 96, 64, 9, 4, 3.0, None),
    ("tiny-ltx", "i2v", 64, 32, 5, 3, 3.0, None),
]
IMAGE = image_bytes(56, 40, seed=4)


@pytest.fixture(scope="module")
def multi_app(ray_cluster, serve_port, preset_specs, tmp_path_factory):
    return deploy_models_app(APP, MODELS, "disaggregated", serve_port, preset_specs,
                             tmp_path_factory.mktemp("multi-state"))


def test_shared_weights_are_deployed_once_and_each_model_has_its_own_denoiser(multi_app):
    from ray import serve

    _, names = multi_app
    assert set(serve.status().applications[APP].deployments) == set(names) == {
        "VideoAPI", "PostProcessor",
        # Every tiny Wan preset has the same UMT5 weights; LTX its own T5.
        "TextEncoder-tiny", "TextEncoder-tiny-ltx",
        # Wan 2.1 and the A14B-style models share the Wan 2.1 VAE; TI2V and LTX have their own.
        "VaeDecoder-tiny", "VaeDecoder-tiny-wan22-ti2v", "VaeDecoder-tiny-ltx",
        # The same VAE, but Wan 2.1 I2V also has CLIP: four different conditioners.
        "ImageConditioner-tiny-i2v", "ImageConditioner-tiny-wan22-moe-i2v", "ImageConditioner-tiny-wan22-ti2v",
        "ImageConditioner-tiny-ltx",
        *(f"Denoiser-{model}" for model in MODELS),
    }


def test_models_lists_every_model_with_its_tasks(multi_app):
    url, _ = multi_app
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [model["id"] for model in models] == MODELS
    tasks = {model["id"]: model["tasks"] for model in models}
    assert tasks["tiny"] == ["t2v"] and tasks["tiny-wan22-moe-i2v"] == ["i2v"]
    assert tasks["tiny-wan22-ti2v"] == tasks["tiny-ltx"] == ["i2v", "t2v"]
    assert [model["default"] for model in models] == [True] + [False] * (len(MODELS) - 1)
    assert {model["family"] for model in models} == {"wan", "ltx"}


def _create(url: str, model: str, task: str, width: int, height: int, frames: int, steps: int, guidance: float,
            guidance_2: float | None) -> str:
    data = {"model": model, "prompt": "a red car at night", "negative_prompt": "blurry", "size": f"{width}x{height}",
            "num_frames": str(frames), "num_inference_steps": str(steps), "guidance_scale": str(guidance),
            "seed": "33"}
    if guidance_2 is not None:
        data["guidance_scale_2"] = str(guidance_2)
    files = {"input_reference": ("first.png", IMAGE, "image/png")} if task == "i2v" else None
    response = httpx.post(f"{url}/v1/videos", data=data, files=files, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_every_family_and_task_served_at_once_equals_diffusers(multi_app, preset_specs):
    url, _ = multi_app
    ids = {job: _create(url, *job) for job in JOBS}  # every family's jobs in the app at the same time
    deadline = time.monotonic() + 420
    pending = dict(ids)
    while pending and time.monotonic() < deadline:
        for job, video_id in list(pending.items()):
            video = httpx.get(f"{url}/v1/videos/{video_id}").json()
            assert video["status"] != "failed", video
            if video["status"] == "completed":
                del pending[job]
        time.sleep(0.2)
    assert not pending, f"not completed in time: {list(pending)}"
    for job, video_id in ids.items():
        model, task, width, height, frames, steps, guidance, guidance_2 = job
        video = httpx.get(f"{url}/v1/videos/{video_id}").json()
        assert video["model"] == model and video["size"] == f"{width}x{height}"
        content = httpx.get(f"{url}/v1/videos/{video_id}/content", params={"variant": "frames"})
        served = np.load(io.BytesIO(content.content))
        spec = preset_specs[model]
        raw = {"prompt": "a red car at night", "negative_prompt": "blurry", "width": width, "height": height,
               "num_frames": frames, "num_inference_steps": steps, "guidance_scale": guidance, "seed": 33}
        if guidance_2 is not None:
            raw["guidance_scale_2"] = guidance_2
        if task == "i2v":
            raw["image"] = IMAGE
        _, expected = reference(spec, diffusers_pipeline(spec, Task(task)), validate_generation(raw, spec))
        assert served.shape == expected.shape, job
        assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1, job


@pytest.mark.parametrize(
    "fields,with_image,status,param,words",
    [
        ({"model": "sora-2"}, False, 404, "model", ["sora-2", "tiny-ltx"]),
        ({"model": "tiny", "guidance_scale_2": 3.0}, False, 400, "guidance_scale_2", ["one expert"]),
        ({"model": "tiny"}, True, 400, "input_reference", ["text-to-video"]),
        ({"model": "tiny-wan22-moe-i2v"}, False, 400, "input_reference", ["required"]),
        ({"model": "tiny-wan22-ti2v", "size": "48x32"}, False, 400, "size", ["multiple of 32", "16x downsampling"]),
        ({"model": "tiny-ltx", "num_frames": 7}, False, 400, "num_frames", ["4k+1"]),
        ({"model": "tiny-ltx", "flow_shift": 3.0}, False, 400, "flow_shift", ["derives its shift"]),
    ],
)
def test_bad_input_names_the_field(multi_app, fields, with_image, status, param, words):
    url, _ = multi_app
    files = {"input_reference": ("first.png", IMAGE, "image/png")} if with_image else None
    data = {"prompt": "a cat", **fields}
    # JSON values carry their field's type (the API refuses "3" for a number in JSON); a form sends strings.
    response = (httpx.post(f"{url}/v1/videos", data={k: str(v) for k, v in data.items()}, files=files, timeout=30)
                if files
                else httpx.post(f"{url}/v1/videos", json=data, timeout=30))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    for word in words:
        assert word in error["message"]


def test_a_request_without_a_model_goes_to_the_first(multi_app):
    url, _ = multi_app
    response = httpx.post(f"{url}/v1/videos", json={"prompt": "a cat", "num_inference_steps": 1}, timeout=30)
    assert response.status_code == 200 and response.json()["model"] == "tiny"
