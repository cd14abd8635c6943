"""The staged path reproduces diffusers' WanPipeline / WanImageToVideoPipeline exactly.

Oracle: diffusers' own __call__ on the same directory, loaded with from_pretrained, the
same seed through a CPU generator. Latents must agree to fp32 tolerance and uint8 frames
within one level.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.request_validation import validate_generation
from engine.stages.image_conditioner import decode_image
from engine.stages.vae_decoder import to_uint8
from tests.conftest import image_bytes

T2V_CASES = [
    # width, height, frames, steps, guidance, negative prompt (None: the model's default)
    pytest.param(32, 32, 9, 4, 5.0, "blurry, low quality", id="square-cfg-negative"),
    pytest.param(48, 32, 5, 3, 1.0, None, id="wide-guidance1-no-uncond"),
    pytest.param(32, 64, 13, 6, 3.5, "", id="tall-cfg-empty-negative"),
    pytest.param(64, 48, 1, 2, 0.0, None, id="single-frame-guidance0"),
    pytest.param(16, 32, 17, 5, 7.5, None, id="default-wan-negative"),
]

I2V_CASES = [
    # width, height, frames, steps, guidance, negative, image (w, h, format)
    pytest.param(32, 32, 5, 3, 5.0, "static", (40, 56, "PNG"), id="square-png"),
    pytest.param(48, 32, 9, 4, 1.0, None, (64, 48, "JPEG"), id="wide-jpeg-guidance1"),
    pytest.param(32, 48, 5, 2, 4.0, "", (20, 90, "WEBP"), id="tall-webp-empty-negative"),
    pytest.param(32, 32, 13, 3, 6.0, None, (32, 32, "PNG"), id="default-negative"),
]


@pytest.fixture(scope="module")
def diffusers_t2v(tiny_spec):
    from diffusers import WanPipeline

    return WanPipeline.from_pretrained(tiny_spec.source)


@pytest.fixture(scope="module")
def diffusers_i2v(tiny_i2v_spec):
    from diffusers import WanImageToVideoPipeline

    return WanImageToVideoPipeline.from_pretrained(tiny_i2v_spec.source)


def _reference(pipeline, request, **extra):
    """diffusers' latents and uint8 frames for ``request``."""
    common = dict(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        height=request.height,
        width=request.width,
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        **extra,
    )
    latents = pipeline(generator=torch.Generator("cpu").manual_seed(request.seed), output_type="latent", **common)
    frames = pipeline(generator=torch.Generator("cpu").manual_seed(request.seed), output_type="np", **common)
    return latents.frames, to_uint8(frames.frames[0])


def _ours(staged, request):
    latents = staged.denoiser.denoise(staged.denoise_task(request))
    frames = staged.vae_decoder.decode(latents, fps=request.fps)
    return latents.latents, frames.frames


def _assert_equivalent(ours, reference):
    our_latents, our_frames = ours
    reference_latents, reference_frames = reference
    assert our_latents.shape == reference_latents.shape
    torch.testing.assert_close(our_latents, reference_latents, rtol=1e-5, atol=1e-5)
    assert our_frames.shape == reference_frames.shape
    assert our_frames.dtype == np.uint8
    assert np.abs(our_frames.astype(int) - reference_frames.astype(int)).max() <= 1
    # The comparison means something only if the video is not a flat colour.
    assert our_frames.std() > 1.0


def _raw(width, height, frames, steps, guidance, negative, seed):
    raw = dict(
        prompt="a red car drives through the city at night",
        width=width,
        height=height,
        num_frames=frames,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    if negative is not None:
        raw["negative_prompt"] = negative
    return raw


@pytest.mark.parametrize("width,height,frames,steps,guidance,negative", T2V_CASES)
def test_text_to_video_matches_diffusers(tiny_pipeline, diffusers_t2v, width, height, frames, steps, guidance, negative):
    request = validate_generation(_raw(width, height, frames, steps, guidance, negative, seed=1234), tiny_pipeline.spec)
    assert request.num_frames == frames
    _assert_equivalent(_ours(tiny_pipeline, request), _reference(diffusers_t2v, request))


def test_text_to_video_flow_shift_override_matches_a_pipeline_configured_with_it(tiny_pipeline, diffusers_t2v):
    from diffusers import UniPCMultistepScheduler, WanPipeline

    raw = _raw(32, 32, 5, 4, 5.0, "blur", seed=7) | {"flow_shift": 5.0}
    request = validate_generation(raw, tiny_pipeline.spec)
    shifted = WanPipeline(
        **{
            **diffusers_t2v.components,
            "scheduler": UniPCMultistepScheduler.from_config(diffusers_t2v.scheduler.config, flow_shift=5.0),
        }
    )
    ours = _ours(tiny_pipeline, request)
    _assert_equivalent(ours, _reference(shifted, request))
    unshifted = _ours(tiny_pipeline, validate_generation(_raw(32, 32, 5, 4, 5.0, "blur", seed=7), tiny_pipeline.spec))
    assert not torch.allclose(ours[0], unshifted[0])


@pytest.mark.parametrize("width,height,frames,steps,guidance,negative,image", I2V_CASES)
def test_image_to_video_matches_diffusers(
    tiny_i2v_pipeline, diffusers_i2v, width, height, frames, steps, guidance, negative, image
):
    raw = _raw(width, height, frames, steps, guidance, negative, seed=99) | {"image": image_bytes(*image)}
    request = validate_generation(raw, tiny_i2v_pipeline.spec)
    reference = _reference(diffusers_i2v, request, image=decode_image(request.image))
    _assert_equivalent(_ours(tiny_i2v_pipeline, request), reference)


def test_seed_changes_the_video(tiny_pipeline):
    first = _ours(tiny_pipeline, validate_generation(_raw(32, 32, 5, 2, 5.0, None, seed=1), tiny_pipeline.spec))
    second = _ours(tiny_pipeline, validate_generation(_raw(32, 32, 5, 2, 5.0, None, seed=2), tiny_pipeline.spec))
    assert not np.array_equal(first[1], second[1])
