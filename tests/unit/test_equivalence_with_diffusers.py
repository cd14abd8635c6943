"""The staged path reproduces diffusers' own pipeline for every family and task.

Oracle: diffusers' own ``__call__`` of the pipeline class a checkpoint is run as
(WanPipeline / WanImageToVideoPipeline for Wan 2.1, Wan 2.2 A14B and TI2V;
LTXPipeline / LTXImageToVideoPipeline for LTX-Video) on the same directory, loaded
with from_pretrained, the same seed through a CPU generator. Latents must agree to fp32
tolerance and uint8 frames within one level.

Models: the built-in presets and directories built here from the real classes with
configs the presets do not use (tests/support/model_directories.py): other head counts, other
multistep schedulers, other boundary ratios, a VAE whose size and frame rules differ.
Sizes are non-square and below 128, taken from each checkpoint's own rules.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.models.model_spec import Task
from engine.request_validation import validate_generation
from tests.support.images import image_bytes
from tests.support.diffusers_reference import diffusers_pipeline, reference
from tests.support.model_directories import BUILDERS, build_model_directory

PRESETS = ["tiny", "tiny-i2v", "tiny-wan22-moe", "tiny-wan22-moe-i2v", "tiny-wan22-ti2v", "tiny-ltx"]
MODELS = PRESETS + [f"dir:{name}" for name in BUILDERS]
# (model, task) pairs: every task each model runs.
TASKS = {
    "tiny": ["t2v"], "tiny-i2v": ["i2v"], "tiny-wan22-moe": ["t2v"], "tiny-wan22-moe-i2v": ["i2v"],
    "tiny-wan22-ti2v": ["t2v", "i2v"], "tiny-ltx": ["t2v", "i2v"],
    "dir:wan21-t2v-small-vae": ["t2v"], "dir:wan21-i2v": ["i2v"], "dir:wan22-moe-t2v": ["t2v"],
    "dir:wan22-moe-i2v": ["i2v"], "dir:wan22-ti2v": ["t2v", "i2v"], "dir:ltx-unipc": ["t2v", "i2v"],
}
# Sizes in units of the checkpoint's size multiple, frames in units of its frame step (+1),
# steps, guidance, negative prompt (None: the model's default), image (w, h, format).
CASES = [
    pytest.param((3, 2), 2, 6, 5.0, "blurry, low quality", (40, 56, "PNG"), id="wide-cfg"),
    pytest.param((1, 3), 1, 4, 1.0, None, (64, 48, "JPEG"), id="tall-no-cfg"),
    pytest.param((2, 1), 0, 3, 3.5, "", (20, 90, "WEBP"), id="one-frame-empty-negative"),
]


@pytest.fixture(scope="module")
def model_directories(tmp_path_factory):
    return tmp_path_factory.mktemp("model-directories")


@pytest.fixture(scope="module")
def loaded(preset_specs, model_directories):
    """model -> (spec, StagedPipeline, {task: diffusers pipeline}), each loaded once."""
    from engine.models.model_registry import resolve_model
    from engine.staged_pipeline import StagedPipeline

    cache = {}

    def load(model: str):
        if model not in cache:
            if model.startswith("dir:"):
                spec = resolve_model(str(build_model_directory(model[4:], model_directories)), preset_specs.cache)
            else:
                spec = preset_specs[model]
            cache[model] = (spec, StagedPipeline.load(spec), {})
        return cache[model]

    return load


def _diffusers(loaded_model, task: Task):
    spec, _, pipelines = loaded_model
    if task not in pipelines:
        pipelines[task] = diffusers_pipeline(spec, task)
    return pipelines[task]


def _request(spec, task: Task, size_units, frame_units, steps, guidance, negative, image, seed=1234, **extra):
    multiple, frame_step = spec.limits.size_multiple, spec.limits.frame_step
    raw = dict(prompt="a red car drives through the city at night", width=size_units[0] * multiple,
               height=size_units[1] * multiple, num_frames=frame_units * frame_step + 1, num_inference_steps=steps,
               guidance_scale=guidance, seed=seed, **extra)
    if negative is not None:
        raw["negative_prompt"] = negative
    if task is Task.IMAGE_TO_VIDEO:
        raw["image"] = image_bytes(*image)
    return validate_generation(raw, spec)


def ours(staged, request):
    latents = staged.denoiser.denoise(staged.denoise_task(request))
    return latents.latents, staged.vae_decoder.decode(latents, fps=request.fps).frames


def assert_equivalent(our_result, reference_result):
    our_latents, our_frames = our_result
    reference_latents, reference_frames = reference_result
    assert our_latents.shape == reference_latents.shape
    torch.testing.assert_close(our_latents, reference_latents, rtol=1e-5, atol=1e-5)
    assert our_frames.shape == reference_frames.shape
    assert our_frames.dtype == np.uint8
    assert np.abs(our_frames.astype(int) - reference_frames.astype(int)).max() <= 1
    # The comparison means something only if the video is not a flat colour.
    assert our_frames.std() > 1.0


@pytest.mark.parametrize("size_units,frame_units,steps,guidance,negative,image", CASES)
@pytest.mark.parametrize("model,task", [(model, task) for model in MODELS for task in TASKS[model]])
def test_staged_path_matches_diffusers(loaded, model, task, size_units, frame_units, steps, guidance, negative, image):
    spec, staged, _ = loaded(model)
    task = Task(task)
    request = _request(spec, task, size_units, frame_units, steps, guidance, negative, image)
    assert request.task is task and request.width != request.height and max(request.width, request.height) < 128
    assert_equivalent(ours(staged, request), reference(spec, _diffusers(loaded(model), task), request))


@pytest.mark.parametrize("model", ["tiny-wan22-moe", "tiny-wan22-moe-i2v", "dir:wan22-moe-t2v", "dir:wan22-moe-i2v"])
def test_two_expert_models_switch_experts_at_diffusers_boundary_with_their_own_guidance(loaded, model):
    spec, staged, _ = loaded(model)
    task = next(iter(spec.tasks))
    request = _request(spec, task, (3, 2), 2, 10, 4.0, "blurry", (40, 40, "PNG"), guidance_scale_2=2.0)
    state = staged.denoiser.start(staged.denoise_task(request))
    boundary = spec.boundary_ratio * state.scheduler.config.num_train_timesteps
    assert state.experts == tuple(0 if t >= boundary else 1 for t in state.scheduler.timesteps)
    assert set(state.experts) == {0, 1}  # this request crosses the boundary
    pipeline = _diffusers(loaded(model), task)
    result = ours(staged, request)
    assert_equivalent(result, reference(spec, pipeline, request))
    # Both the low-noise expert and its guidance really shape the output.
    other_guidance = ours(staged, dataclasses.replace(request, guidance_scale_2=request.guidance_scale))
    assert not torch.allclose(result[0], other_guidance[0], atol=1e-4)
    swapped = type(pipeline)(**{**pipeline.components, "transformer_2": pipeline.transformer},
                             boundary_ratio=pipeline.config.boundary_ratio)
    assert not torch.allclose(result[0], reference(spec, swapped, request)[0], atol=1e-4)


def test_ti2v_keeps_the_image_as_the_first_latent_frame(loaded):
    spec, staged, _ = loaded("tiny-wan22-ti2v")
    request = _request(spec, Task.IMAGE_TO_VIDEO, (2, 1), 2, 4, 5.0, None, (48, 32, "PNG"))
    task = staged.denoise_task(request)
    latents = staged.denoiser.denoise(task).latents
    assert torch.equal(latents[:, :, :1], task.image.condition)
    text_only = ours(staged, dataclasses.replace(request, image=None, task=Task.TEXT_TO_VIDEO))[0]
    assert not torch.allclose(latents, text_only, atol=1e-3)


def test_ltx_frame_rate_sets_its_rotary_scale_as_diffusers_does(loaded):
    spec, staged, _ = loaded("tiny-ltx")
    request = _request(spec, Task.TEXT_TO_VIDEO, (3, 2), 2, 4, 3.0, "blurry", None, fps=12)
    result = ours(staged, request)
    assert_equivalent(result, reference(spec, _diffusers(loaded("tiny-ltx"), Task.TEXT_TO_VIDEO), request))
    assert not torch.allclose(result[0], ours(staged, dataclasses.replace(request, fps=24))[0], atol=1e-5)


def test_wan_flow_shift_override_matches_a_pipeline_configured_with_it(loaded):
    spec, staged, _ = loaded("tiny")
    request = _request(spec, Task.TEXT_TO_VIDEO, (2, 2), 1, 4, 5.0, "blur", None, seed=7, flow_shift=5.0)
    pipeline = _diffusers(loaded("tiny"), Task.TEXT_TO_VIDEO)
    shifted = type(pipeline)(**{**pipeline.components,
                                "scheduler": type(pipeline.scheduler).from_config(pipeline.scheduler.config,
                                                                                  flow_shift=5.0)})
    result = ours(staged, request)
    assert_equivalent(result, reference(spec, shifted, request))
    assert not torch.allclose(result[0], ours(staged, dataclasses.replace(request, flow_shift=3.0))[0])


def test_seed_changes_the_video(loaded):
    spec, staged, _ = loaded("tiny")
    first = ours(staged, _request(spec, Task.TEXT_TO_VIDEO, (2, 2), 1, 2, 5.0, None, None, seed=1))
    second = ours(staged, _request(spec, Task.TEXT_TO_VIDEO, (2, 2), 1, 2, 5.0, None, None, seed=2))
    assert not np.array_equal(first[1], second[1])
