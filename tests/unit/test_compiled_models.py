"""The torch.compile'd DiT and VAE decoder: equal to the eager modules (inside the
batching engine for the DiT), compiled only at warm-up, never recompiling while serving.

Real inductor compilation on the CPU (tiny presets), so each compiled model costs tens
of seconds to build: module-scoped fixtures build each once.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.batching.denoise_engine import DenoiseEngine, FinishedEvent, InProcessExecutor
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.request_validation import validate_generation
from engine.stages.loading import load_denoiser
from engine.stages.loading import image_embed_tokens
from engine.stages.loading import load_vae_decoder
from tests.support.images import image_bytes


@pytest.fixture(scope="module")
def compiled_t2v(tiny_spec):
    denoiser = load_denoiser(tiny_spec, compile_transformer=True)
    defaults = tiny_spec.defaults
    [shape] = denoiser.warm_up_compiled(defaults.width, defaults.height, defaults.num_frames)
    return denoiser, shape


@pytest.fixture(scope="module")
def full_text_eager(tiny_spec):
    """The eager denoiser a compiled one falls back to: diffusers' forward over all 512 text positions,
    every token's timestep embedded on its own (an eager denoiser otherwise attends over the compact
    text and embeds distinct timesteps once, equal only within float rounding)."""
    from engine.families.wan.denoiser import WanDenoiser

    return WanDenoiser(tiny_spec, compact_text=False, distinct_timesteps=False)


def _request(spec, index: int, **fields):
    raw = {"prompt": ["a cat", "a red car at night", "waves on a beach"][index % 3], "num_inference_steps": 3 + index % 3,
           "guidance_scale": [5.0, 3.0, 7.5][index % 3], "seed": 100 + index, **fields}
    return validate_generation(raw, spec, request_id=f"r{index}")


def _run(denoiser, tasks, arrival_steps):
    """Tasks join the engine at the given steps; returns each one's final latents."""
    engine = DenoiseEngine(InProcessExecutor(denoiser), SchedulerConfig(max_batch_size=8))
    pending = sorted(zip(arrival_steps, tasks), key=lambda pair: pair[0])
    results, step = {}, 0
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            engine.add_request(pending.pop(0)[1])
        for event in engine.step():
            if isinstance(event, FinishedEvent):
                results[event.request_id] = event.latents.latents
        step += 1
    return results


def test_compiled_steps_equal_eager_for_any_batch_size_without_recompiling(tiny_pipeline, compiled_t2v):
    denoiser, _ = compiled_t2v
    before = denoiser.compiled[0].counters.compiled_calls
    requests = [_request(tiny_pipeline.spec, index) for index in range(4)]
    tasks = [tiny_pipeline.denoise_task(request) for request in requests]
    # Staggered: the batch holds 1, 2, 3 and 4 requests (2 to 8 rows) at different steps.
    results = _run(denoiser, tasks, arrival_steps=[0, 1, 2, 3])
    assert denoiser.compiled[0].counters.compiled_calls - before >= 5
    assert denoiser.compiled[0].counters.recompile_fallbacks == 0
    for task in tasks:
        eager = tiny_pipeline.denoiser.denoise(task).latents
        torch.testing.assert_close(results[task.request_id], eager, rtol=1e-4, atol=1e-4)
        # Compiled, not the eager module again: rounding differs, if only a little.
        assert not torch.equal(results[task.request_id], eager)


def test_a_shape_that_was_not_warmed_runs_eagerly_and_exactly(tiny_pipeline, compiled_t2v, full_text_eager):
    denoiser, shape = compiled_t2v
    counters = denoiser.compiled[0].counters
    compiled_before, eager_before = counters.compiled_calls, counters.eager_calls
    request = _request(tiny_pipeline.spec, 0, width=48, height=32, num_frames=5)
    task = tiny_pipeline.denoise_task(request)
    warmed_latents = dict(shape.arguments)["hidden_states"][0]
    assert tuple(task.initial_latents.shape[1:]) != warmed_latents
    latents = denoiser.denoise(task).latents
    assert counters.compiled_calls == compiled_before
    assert counters.eager_calls - eager_before == request.num_inference_steps
    assert torch.equal(latents, full_text_eager.denoise(task).latents)


def test_a_single_row_step_runs_eagerly(tiny_pipeline, compiled_t2v, full_text_eager):
    # Guidance 1 turns CFG off: one request is one row, which would specialise the graph.
    denoiser, _ = compiled_t2v
    counters = denoiser.compiled[0].counters
    compiled_before = counters.compiled_calls
    task = tiny_pipeline.denoise_task(_request(tiny_pipeline.spec, 1, guidance_scale=1.0))
    assert task.text.negative_prompt_embeds is None
    latents = denoiser.denoise(task).latents
    assert counters.compiled_calls == compiled_before
    assert torch.equal(latents, full_text_eager.denoise(task).latents)


def test_image_to_video_steps_compile_with_the_image_encoders_token_count(tiny_i2v_pipeline):
    spec = tiny_i2v_pipeline.spec
    denoiser = load_denoiser(spec, compile_transformer=True)
    [shape] = denoiser.warm_up_compiled(spec.defaults.width, spec.defaults.height, spec.defaults.num_frames)
    request = validate_generation({"prompt": "the cat turns", "image": image_bytes(64, 48), "num_inference_steps": 3,
                                   "seed": 9}, spec, request_id="i2v")
    task = tiny_i2v_pipeline.denoise_task(request)
    # The token count came from the image encoder's config alone.
    image_shape = dict(shape.arguments)["encoder_hidden_states_image"][0]
    assert image_shape == tuple(task.image.image_embeds.shape[1:])
    assert image_shape[0] == image_embed_tokens(spec)
    latents = denoiser.denoise(task).latents
    assert denoiser.compiled[0].counters.compiled_calls == 3
    assert denoiser.compiled[0].counters.recompile_fallbacks == 0
    torch.testing.assert_close(latents, tiny_i2v_pipeline.denoiser.denoise(task).latents, rtol=1e-4, atol=1e-4)


def test_both_experts_of_a_two_expert_model_compile_and_equal_eager(preset_cache):
    from engine.models.model_registry import resolve_model
    from engine.staged_pipeline import StagedPipeline

    spec = resolve_model("tiny-wan22-moe", preset_cache)
    eager = StagedPipeline.load(spec)
    denoiser = load_denoiser(spec, compile_transformer=True)
    denoiser.warm_up_compiled(spec.defaults.width, spec.defaults.height, spec.defaults.num_frames)
    tasks = [eager.denoise_task(_request(spec, index)) for index in range(3)]
    results = _run(denoiser, tasks, arrival_steps=[0, 1, 1])
    for compiled in denoiser.compiled:  # each expert ran compiled steps, and none recompiled
        assert compiled.counters.compiled_calls > 0 and compiled.counters.recompile_fallbacks == 0
    for task in tasks:
        torch.testing.assert_close(results[task.request_id], eager.denoiser.denoise(task).latents, rtol=1e-4, atol=1e-4)


def test_warm_up_without_compilation_is_refused(tiny_spec):
    with pytest.raises(ValueError, match="compile_transformer=True"):
        load_denoiser(tiny_spec).warm_up_compiled(32, 32, 5)


def test_a_denoiser_replica_with_compile_on_serves_compiled_steps(tiny_pipeline, preset_cache):
    import asyncio

    from engine.batching.async_denoise_engine import DenoiseDone
    from serve.app_config import AppConfig
    from serve.deployments.denoiser import DenoiserDeployment

    # Constructed here as Serve would in a replica: the warm-up runs in the constructor, on the model thread.
    deployment = DenoiserDeployment(AppConfig.model_validate({"models": ["tiny"], "cache_dir": str(preset_cache),
                                                              "device": "cpu", "denoiser": {"compile": True}}))
    [compiled] = deployment.engine.executor.denoiser.compiled
    assert len(compiled.shapes.warmed_shapes) == 1
    request = _request(tiny_pipeline.spec, 2)
    task = tiny_pipeline.denoise_task(request)

    async def run():
        async for event in deployment.denoise(request, task.text, None):
            if isinstance(event, DenoiseDone):
                return event.latents.latents

    latents = asyncio.run(run())
    assert compiled.counters.compiled_calls == request.num_inference_steps
    torch.testing.assert_close(latents, tiny_pipeline.denoiser.denoise(task).latents, rtol=1e-4, atol=1e-4)


def test_compile_on_a_denoiser_of_several_ranks_is_refused_naming_the_fields():
    from pydantic import ValidationError

    from serve.app_config import AppConfig

    with pytest.raises(ValidationError, match=r"denoiser\.compile.*parallel\.tensor is 2"):
        AppConfig.model_validate({"denoiser": {"compile": True}, "parallel": {"tensor": 2}})


@pytest.fixture(scope="module")
def compiled_vae(tiny_spec):
    decoder = load_vae_decoder(tiny_spec, compile_decoder=True)
    defaults = tiny_spec.defaults
    return decoder, decoder.warm_up_compiled(defaults.width, defaults.height, defaults.num_frames)


def _latents(spec, num_frames: int, seed: int) -> torch.Tensor:
    shape = spec.geometry.latent_shape(num_frames, spec.defaults.height, spec.defaults.width)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_compiled_vae_decode_equals_eager_within_one_level(tiny_pipeline, compiled_vae):
    decoder, _ = compiled_vae
    before = decoder.compiled.counters.compiled_calls
    for seed in range(3):
        latents = _latents(tiny_pipeline.spec, tiny_pipeline.spec.defaults.num_frames, seed)
        frames = decoder.decode_latents(latents)
        eager = tiny_pipeline.vae_decoder.decode_latents(latents)
        assert frames.shape == eager.shape and frames.dtype == np.uint8
        assert np.abs(frames.astype(int) - eager.astype(int)).max() <= 1
    assert decoder.compiled.counters.compiled_calls - before == 3
    assert decoder.compiled.counters.recompile_fallbacks == 0


def test_a_video_length_that_was_not_warmed_decodes_eagerly_and_exactly(tiny_pipeline, compiled_vae):
    decoder, shape = compiled_vae
    counters = decoder.compiled.counters
    compiled_before, eager_before = counters.compiled_calls, counters.eager_calls
    latents = _latents(tiny_pipeline.spec, 5, seed=7)
    assert latents.shape[2] != shape[2]
    frames = decoder.decode_latents(latents)
    assert (counters.compiled_calls, counters.eager_calls - eager_before) == (compiled_before, 1)
    assert np.array_equal(frames, tiny_pipeline.vae_decoder.decode_latents(latents))


def test_vae_warm_up_without_compilation_is_refused(tiny_spec):
    with pytest.raises(ValueError, match="compile_decoder=True"):
        load_vae_decoder(tiny_spec).warm_up_compiled(32, 32, 9)


def test_a_vae_replica_with_compile_on_decodes_compiled(tiny_pipeline, preset_cache):
    import asyncio

    from engine.stage_types import Latents
    from serve.app_config import AppConfig
    from serve.deployments.vae_decoder import VaeDecoderDeployment

    deployment = VaeDecoderDeployment(AppConfig.model_validate({"models": ["tiny"], "cache_dir": str(preset_cache),
                                                                "device": "cpu", "vae_decoder": {"compile": True}}))
    latents = _latents(tiny_pipeline.spec, tiny_pipeline.spec.defaults.num_frames, seed=11)
    frames = asyncio.run(deployment.decode(Latents("r", latents), 16))
    assert deployment.stage.compiled.counters.compiled_calls == 1
    assert np.abs(frames.frames.astype(int) - tiny_pipeline.vae_decoder.decode_latents(latents).astype(int)).max() <= 1
