"""Every validation rule refuses a bad value with an error naming the field and the range."""

from __future__ import annotations

import dataclasses

import pytest

from engine.request_validation import MAX_SEED, RequestValidationError, validate_generation
from tests.support.images import image_bytes


def _refused(raw, spec) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as caught:
        validate_generation(raw, spec)
    return caught.value


BAD_T2V_VALUES = [
    # field, bad value, words the message must contain
    # The rules come from the checkpoint: 8x VAE, 2x2 patch, 4x temporal VAE, a 1024-position rotary table.
    ("width", 40, ["multiple of 16", "8x downsampling", "2x2 patch", "got 40"]),
    ("width", 16400, ["at most 16384", "got 16400"]),
    ("width", 0, ["at least 16"]),
    ("width", 16.5, []),
    ("height", 24, ["multiple of 16", "got 24"]),
    ("height", 16384 + 16, ["at most 16384"]),
    ("num_frames", 8, ["4k+1", "1, 5, 9", "got 8"]),
    ("num_frames", 4097, ["up to 4093", "got 4097"]),
    ("num_frames", 0, ["4k+1"]),
    ("guidance_scale_2", 3.0, ["not accepted", "one expert"]),
    ("num_inference_steps", 0, ["between 1 and 100"]),
    ("num_inference_steps", 101, ["between 1 and 100", "got 101"]),
    ("guidance_scale", -0.5, ["between 0 and 30"]),
    ("guidance_scale", 31.0, ["between 0 and 30"]),
    ("prompt", "   ", ["empty"]),
    ("prompt", "x" * 4001, ["at most 4000 characters"]),
    ("negative_prompt", "y" * 4001, ["at most 4000 characters"]),
    ("seed", -1, ["between 0 and", str(MAX_SEED)]),
    ("seed", MAX_SEED + 1, ["between 0 and"]),
    ("fps", 0, ["between 1 and 60"]),
    ("fps", 61, ["between 1 and 60"]),
    ("flow_shift", 0.0, ["greater than 0"]),
    ("flow_shift", 25.0, ["at most 20"]),
    ("width", "wide", []),
    ("steps", 10, ["not a known field"]),
]


@pytest.mark.parametrize("field,value,words", BAD_T2V_VALUES)
def test_bad_value_names_field_and_range(tiny_spec, field, value, words):
    error = _refused({"prompt": "a cat", field: value}, tiny_spec)
    assert error.field == field
    assert field in str(error)
    for word in words:
        assert word in str(error)


def test_missing_prompt_is_named(tiny_spec):
    assert _refused({"width": 32}, tiny_spec).field == "prompt"


def test_nothing_is_rounded(tiny_spec):
    # diffusers would silently turn 40 into 32 and 8 frames into 5; we refuse both.
    error = _refused({"prompt": "a cat", "width": 40, "num_frames": 8}, tiny_spec)
    assert {item.field for item in error.errors} == {"width", "num_frames"}


def test_defaults_come_from_the_model(tiny_spec):
    request = validate_generation({"prompt": "a cat"}, tiny_spec)
    defaults = tiny_spec.defaults
    assert (request.width, request.height, request.num_frames) == (defaults.width, defaults.height, defaults.num_frames)
    assert request.num_inference_steps == defaults.num_inference_steps
    assert request.guidance_scale == defaults.guidance_scale
    assert request.negative_prompt == defaults.negative_prompt
    assert request.flow_shift == defaults.flow_shift
    assert 0 <= request.seed <= MAX_SEED
    assert request.image is None


def test_explicit_values_are_kept(tiny_spec):
    raw = {"prompt": "a cat", "width": 48, "height": 16, "num_frames": 13, "num_inference_steps": 7,
           "guidance_scale": 0.0, "seed": MAX_SEED, "fps": 24, "negative_prompt": "", "flow_shift": 2.5}
    request = validate_generation(raw, tiny_spec)
    assert (request.width, request.height, request.num_frames, request.num_inference_steps) == (48, 16, 13, 7)
    assert (request.guidance_scale, request.seed, request.fps, request.flow_shift) == (0.0, MAX_SEED, 24, 2.5)
    assert request.negative_prompt == ""
    assert not request.uses_classifier_free_guidance


def test_text_to_video_model_refuses_an_image(tiny_spec):
    error = _refused({"prompt": "a cat", "image": image_bytes(32, 32)}, tiny_spec)
    assert error.field == "image" and "text-to-video" in str(error)


def test_image_to_video_model_requires_an_image(tiny_i2v_spec):
    error = _refused({"prompt": "a cat"}, tiny_i2v_spec)
    assert error.field == "image" and "required" in str(error)


@pytest.mark.parametrize(
    "data,words",
    [
        pytest.param(b"definitely not an image", ["not a decodable image"], id="garbage"),
        pytest.param(image_bytes(32, 32, "PNG")[:60], ["not a decodable image"], id="truncated-png"),
        pytest.param(image_bytes(32, 32, "GIF"), ["PNG, JPEG, WEBP", "got GIF"], id="gif"),
        pytest.param(image_bytes(8, 32, "PNG"), ["between 16 and 4096", "8x32"], id="too-small"),
    ],
)
def test_bad_images_are_refused(tiny_i2v_spec, data, words):
    error = _refused({"prompt": "a cat", "image": data}, tiny_i2v_spec)
    assert error.field == "image"
    for word in words:
        assert word in str(error)


def test_oversized_image_is_refused(tiny_i2v_spec):
    few_bytes = dataclasses.replace(tiny_i2v_spec.limits, max_image_bytes=1000)
    spec = dataclasses.replace(tiny_i2v_spec, limits=few_bytes)
    assert "at most 1000 bytes" in str(_refused({"prompt": "a", "image": image_bytes(64, 64)}, spec))
    short_sides = dataclasses.replace(tiny_i2v_spec.limits, max_image_side=64)
    spec = dataclasses.replace(tiny_i2v_spec, limits=short_sides)
    assert "between 16 and 64" in str(_refused({"prompt": "a", "image": image_bytes(80, 20, "JPEG")}, spec))


def test_good_image_is_accepted(tiny_i2v_spec):
    data = image_bytes(64, 48, "JPEG")
    assert validate_generation({"prompt": "a cat", "image": data}, tiny_i2v_spec).image == data
