"""The denoiser's one-step-per-call protocol: interleaving, progress, cancellation."""

from __future__ import annotations

import pytest
import torch

from engine.request_validation import validate_generation
from engine.stages.denoiser import GenerationCancelled, StepProgress


def _task(pipeline, **fields):
    raw = {"prompt": "a cat on a street", "seed": 5, "num_frames": 5} | fields
    return pipeline.denoise_task(validate_generation(raw, pipeline.spec))


def test_interleaved_requests_equal_each_run_alone(tiny_pipeline):
    denoiser = tiny_pipeline.denoiser
    first = _task(tiny_pipeline, num_inference_steps=5, guidance_scale=5.0)
    second = _task(tiny_pipeline, seed=6, num_inference_steps=3, guidance_scale=1.0, width=48)
    alone = [denoiser.denoise(task).latents for task in (first, second)]
    states = [denoiser.start(first), denoiser.start(second)]
    while not all(state.finished for state in states):
        for state in states:  # one step each, alternating: what a scheduler outside does
            if not state.finished:
                denoiser.step([state])
    for state, expected in zip(states, alone):
        assert torch.equal(denoiser.finish(state).latents, expected)


def test_one_batched_step_serves_requests_with_different_settings(tiny_pipeline):
    denoiser = tiny_pipeline.denoiser
    tasks = [
        _task(tiny_pipeline, num_inference_steps=4, guidance_scale=5.0, flow_shift=3.0),
        _task(tiny_pipeline, seed=8, num_inference_steps=6, guidance_scale=1.0, flow_shift=5.0),
        _task(tiny_pipeline, seed=9, num_inference_steps=4, guidance_scale=2.5, negative_prompt="dark"),
    ]
    alone = [denoiser.denoise(task).latents for task in tasks]
    states = [denoiser.start(task) for task in tasks]
    while not all(state.finished for state in states):
        denoiser.step([state for state in states if not state.finished])
    for state, expected in zip(states, alone):
        torch.testing.assert_close(denoiser.finish(state).latents, expected, rtol=1e-4, atol=1e-4)


def test_progress_is_reported_after_every_step(tiny_pipeline):
    seen: list[StepProgress] = []
    task = _task(tiny_pipeline, num_inference_steps=4)
    tiny_pipeline.denoiser.denoise(task, seen.append)
    assert [(update.step, update.total_steps) for update in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert {update.request_id for update in seen} == {task.request_id}


def test_callback_cancels_at_the_next_step(tiny_pipeline):
    seen: list[int] = []

    def stop_after_two(update: StepProgress) -> bool:
        seen.append(update.step)
        return update.step < 2

    with pytest.raises(GenerationCancelled, match="after step 2"):
        tiny_pipeline.denoiser.denoise(_task(tiny_pipeline, num_inference_steps=6), stop_after_two)
    assert seen == [1, 2]


@pytest.mark.parametrize("guidance,rows_per_forward", [(1.0, 1), (0.0, 1), (1.01, 2), (5.0, 2)])
def test_unconditional_rows_join_the_forward_only_when_guidance_exceeds_one(tiny_pipeline, guidance, rows_per_forward):
    task = _task(tiny_pipeline, num_inference_steps=3, guidance_scale=guidance)
    assert (task.text.negative_prompt_embeds is not None) == (rows_per_forward == 2)
    rows = []
    hook = tiny_pipeline.denoiser.transformer.register_forward_hook(
        lambda module, args, kwargs, output: rows.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        tiny_pipeline.denoiser.denoise(task)
    finally:
        hook.remove()
    assert rows == [rows_per_forward] * 3  # one forward per step, cond and uncond together


def test_protocol_misuse_is_refused(tiny_pipeline):
    denoiser = tiny_pipeline.denoiser
    state = denoiser.start(_task(tiny_pipeline, num_inference_steps=1))
    with pytest.raises(ValueError, match="1 steps left"):
        denoiser.finish(state)
    denoiser.step([state])
    with pytest.raises(ValueError, match="already finished"):
        denoiser.step([state])
