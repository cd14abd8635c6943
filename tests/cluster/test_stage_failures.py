"""A stage that raises, served for real: the failure is the failing stage's, not the next one's.

The app is the real one (build_app, every deployment a Ray Serve replica on the session's
cluster); its TextEncoder is the real deployment class with ``encode`` raising for one
prompt, so the error starts inside a real replica and crosses Serve as it would in
production. Before the runner awaited each stage, Ray reported the failed text-encoder
task as ready and the Denoiser, handed its result, took the blame.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.support.served_metrics import metric_samples

pytestmark = pytest.mark.timeout(600)
APP = "failing"
POISON = "a prompt the text encoder cannot take"


@pytest.fixture(scope="module")
def failing_app(ray_cluster, serve_port, preset_specs, tmp_path_factory):
    from ray import serve

    from serve.app_builder import build_application
    from serve.app_config import AppConfig
    from serve.deployments.text_encoder import TextEncoderDeployment

    class TextEncoderThatRaises(TextEncoderDeployment):  # defined here: Ray ships it to the replica by value
        async def encode(self, request):
            if request.prompt == POISON:
                raise ValueError("the text encoder raised on purpose")
            return await super().encode(request)

    preset_specs["tiny"]
    args = {"models": ["tiny"], "cache_dir": str(preset_specs.cache), "device": "cpu", "layout": "disaggregated",
            "storage": {"state_dir": str(tmp_path_factory.mktemp("failing-state"))},
            "jobs": {"poll_interval_seconds": 0.05, "lease_seconds": 5.0, "max_attempts": 2},
            "api": {"poll_after_ms": 100}}
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})  # a no-op once another module started it
    serve.run(build_application(AppConfig.model_validate(args), stage_classes={"TextEncoder": TextEncoderThatRaises}), name=APP,
              route_prefix=f"/{APP}")
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    serve.delete(APP)


def _wait_final(url: str, video_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        video = httpx.get(f"{url}/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise AssertionError(f"{video_id} did not finish")


def _failures(url: str) -> dict[str, float]:
    return {dict(labels)["stage"]: value for (name, labels), value in metric_samples(url).items()
            if name == "videoserve_stage_failures_total"}


def test_a_text_encoder_failure_is_the_text_encoders_in_the_job_and_the_metrics(failing_app):
    before = _failures(failing_app)
    created = httpx.post(f"{failing_app}/v1/videos", json={"prompt": POISON})
    assert created.status_code == 200, created.text

    video = _wait_final(failing_app, created.json()["id"])

    assert video["status"] == "failed"
    assert video["error"]["code"] == "stage_failed"
    assert video["error"]["message"] == "the text_encoder stage failed (attempt 2 of 2)"
    assert "raised on purpose" not in json.dumps(video)  # the exception's text is for the log only
    after = _failures(failing_app)
    assert after["text_encoder"] - before.get("text_encoder", 0) == 2  # both attempts, each the encoder's
    assert after.get("denoiser", 0) == before.get("denoiser", 0)
    assert after.get("vae_decoder", 0) == before.get("vae_decoder", 0)


def test_the_same_app_still_serves_prompts_the_stage_can_take(failing_app):
    created = httpx.post(f"{failing_app}/v1/videos", json={"prompt": "a red car"})
    assert _wait_final(failing_app, created.json()["id"])["status"] == "completed"
