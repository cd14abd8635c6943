"""The typed job across the durable boundary: built once, stored, read back as the same value."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from engine.models.model_spec import Task
from engine.request_validation import validate_generation
from serve.jobs.spec import JOB_SPEC_VERSION, JobSpec, PostProcessing
from serve.jobs.store import JobRecord
from tests.support.images import image_bytes


def _record(params: dict, image_path: str | None = None) -> JobRecord:
    now = time.time()
    return JobRecord(id="video_x", model="tiny", created_at=now, updated_at=now, params=params,
                     input_image_path=image_path, webhook_url="http://127.0.0.1:9/hook")


def test_a_stored_spec_reads_back_equal_and_gives_the_engine_the_same_request(tiny_spec):
    request = validate_generation({"prompt": "a fox", "seed": 5, "num_inference_steps": 3}, tiny_spec,
                                  request_id="video_x")
    spec = JobSpec.of(request, PostProcessing(interpolate_fps=24), webhook_url="http://127.0.0.1:9/hook")

    stored = _record(spec.stored())

    assert stored.params["version"] == JOB_SPEC_VERSION
    assert stored.spec == spec
    assert stored.spec.generation_request("video_x") == request


def test_the_input_image_reaches_only_the_request_it_is_given_to(tiny_i2v_spec):
    image = image_bytes(32, 32)
    request = validate_generation({"prompt": "a dog", "image": image}, tiny_i2v_spec, request_id="video_i")
    spec = JobSpec.of(request, PostProcessing())

    assert spec.task is Task.IMAGE_TO_VIDEO
    assert "image" not in spec.stored()["generation"]  # never stored in the record
    assert spec.generation_request("video_i").image is None
    assert spec.generation_request("video_i", image).image == image


def test_a_record_written_before_the_spec_was_typed_still_loads():
    engine = {"prompt": "old", "negative_prompt": "", "width": 32, "height": 32, "num_frames": 5,
              "num_inference_steps": 2, "guidance_scale": 1.0, "flow_shift": 3.0, "seed": 1, "fps": 16}
    old = _record({"engine": engine, "options": {"expand_prompt": False, "interpolate_fps": None, "upscale": 2}},
                  image_path="/state/artifacts/video_x/input_image")

    spec = old.spec

    assert spec.model == "tiny" and spec.task is Task.IMAGE_TO_VIDEO
    assert spec.generation.prompt == "old" and spec.generation.flow_shift == 3.0
    assert spec.post_processing == PostProcessing(upscale=2)
    assert spec.webhook_url == "http://127.0.0.1:9/hook"


def test_a_spec_is_frozen_and_refuses_unknown_fields():
    spec = JobSpec.model_validate({"model": "tiny", "task": "t2v", "generation": {
        "prompt": "a", "negative_prompt": "", "width": 32, "height": 32, "num_frames": 5, "num_inference_steps": 1,
        "guidance_scale": 1.0, "seed": 0, "fps": 16}})
    with pytest.raises(ValidationError):
        spec.model = "other"
    with pytest.raises(ValidationError, match="surprise"):
        JobSpec.model_validate({**spec.stored(), "surprise": 1})
