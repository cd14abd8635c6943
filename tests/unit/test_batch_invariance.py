"""A request's output does not depend on whether, when, or with whom it was batched.

Half the requests cache steps (engine/step_cache): a cached request's rows skip the later
blocks on their own schedule inside steps they share with uncached rows.

Randomized: requests of mixed sizes, step counts, guidance scales, shifts and seeds
arrive at random engine steps; each one's latents and frames are compared with the same
request run alone through the whole-request path. For every family: Wan 2.1, Wan 2.2
A14B's two experts (requests whose step counts and shifts put the expert boundary at
different steps share batches, one expert per forward), TI2V (text- and image-to-video
requests of one model) and LTX (several frame rates).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from engine.batching.denoise_engine import DenoiseEngine, DroppedEvent, FinishedEvent, InProcessExecutor, StepEvent
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.request_validation import validate_generation
from tests.support.images import image_bytes


def _random_request(rng: random.Random, spec, index: int):
    multiple = spec.limits.size_multiple
    raw = {
        "prompt": rng.choice(["a cat", "a red car at night", "waves on a beach, slow motion"]),
        "width": rng.choice([2 * multiple, 3 * multiple]),
        "height": 2 * multiple,
        "num_frames": rng.choice([spec.limits.frame_step + 1, 2 * spec.limits.frame_step + 1]),
        "num_inference_steps": rng.randint(2, 6),
        "guidance_scale": rng.choice([0.0, 1.0, 3.0, 5.0]),
        "seed": rng.randrange(2**31),
    }
    if spec.defaults.flow_shift is not None:
        raw["flow_shift"] = rng.choice([3.0, 5.0])
    if spec.experts == 2:
        raw["guidance_scale_2"] = rng.choice([2.0, 4.0])
    if spec.family == "ltx":
        raw["fps"] = rng.choice([16, 25])
    if spec.needs_image or (spec.is_image_to_video and rng.random() < 0.5):
        raw["image"] = image_bytes(48, 40, seed=index % 2)
    if rng.random() < 0.5:
        raw["negative_prompt"] = rng.choice(["", "blurry"])
    # Every other request caches steps (its own draw, so the others' draws stay as they were):
    # cached and uncached rows share forwards, and each still gets what it gets alone.
    cache_draw = random.Random(index)
    if cache_draw.random() < 0.5:
        raw["step_cache"] = {"policy": cache_draw.choice(["first_block", "taylorseer", "magcache"]),
                             "threshold": cache_draw.choice([0.05, 0.3])}
    return validate_generation(raw, spec, request_id=f"r{index}")


def _run_engine(pipeline, requests, arrival_steps, config, batches=None):
    engine = DenoiseEngine(InProcessExecutor(pipeline.denoiser), config)
    if batches is not None:  # record each forward's (request, expert) pairs
        execute = engine.executor.execute
        engine.executor.execute = lambda states: (
            batches.append([(state.task.request_id, state.expert) for state in states]), execute(states))
    tasks = {request.request_id: pipeline.denoise_task(request) for request in requests}
    pending = sorted(zip(arrival_steps, requests), key=lambda pair: pair[0])
    results, batch_sizes, step = {}, [], 0
    while pending or engine.has_unfinished():
        while pending and pending[0][0] <= step:
            engine.add_request(tasks[pending.pop(0)[1].request_id])
        for event in engine.step():
            if isinstance(event, StepEvent):
                batch_sizes.append(event.batch_size)
            elif isinstance(event, FinishedEvent):
                results[event.request_id] = event.latents.latents
            else:
                raise AssertionError(f"unexpected {event}")
        step += 1
    return results, tasks, batch_sizes


def _assert_each_equals_alone(pipeline, requests, results, tasks):
    assert set(results) == {request.request_id for request in requests}
    for request in requests:
        task = tasks[request.request_id]
        alone = pipeline.denoiser.denoise(task).latents
        torch.testing.assert_close(results[request.request_id], alone, rtol=1e-4, atol=1e-4)
        batched_frames = pipeline.vae_decoder.decode_latents(results[request.request_id], task.generator_state)
        alone_frames = pipeline.vae_decoder.decode_latents(alone, task.generator_state)
        assert np.abs(batched_frames.astype(int) - alone_frames.astype(int)).max() <= 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_outputs_equal_each_request_alone(tiny_pipeline, seed):
    rng = random.Random(seed)
    requests = [_random_request(rng, tiny_pipeline.spec, index) for index in range(8)]
    arrivals = [rng.randint(0, 6) for _ in requests]
    results, tasks, batch_sizes = _run_engine(tiny_pipeline, requests, arrivals, SchedulerConfig(max_batch_size=4))
    assert max(batch_sizes) > 1  # batching really happened
    _assert_each_equals_alone(tiny_pipeline, requests, results, tasks)


@pytest.mark.parametrize("model", ["tiny-wan22-moe", "tiny-wan22-moe-i2v"])
def test_two_expert_requests_crossing_the_boundary_at_different_steps_share_batches(preset_pipelines, model):
    pipeline = preset_pipelines[model]
    rng = random.Random(11)
    requests = [_random_request(rng, pipeline.spec, index) for index in range(8)]
    batches: list[list[tuple[str, int]]] = []
    results, tasks, _ = _run_engine(pipeline, requests, [rng.randint(0, 3) for _ in requests],
                                    SchedulerConfig(max_batch_size=4), batches)
    switch_steps = {rid: pipeline.denoiser.start(task).experts.index(1) for rid, task in tasks.items()
                    if 1 in pipeline.denoiser.start(task).experts}
    assert len(set(switch_steps.values())) > 1  # the boundary falls on different steps
    assert all(len({expert for _, expert in batch}) == 1 for batch in batches)  # one expert per forward
    shared = {batch[0][1] for batch in batches if len(batch) > 1}
    assert shared == {0, 1}  # both experts ran batches of several requests
    _assert_each_equals_alone(pipeline, requests, results, tasks)


@pytest.mark.parametrize("model", ["tiny-wan22-ti2v", "tiny-ltx"])
def test_both_tasks_of_one_model_batch_without_changing_outputs(preset_pipelines, model):
    pipeline = preset_pipelines[model]
    rng = random.Random(5)
    requests = [_random_request(rng, pipeline.spec, index) for index in range(8)]
    assert {request.task for request in requests} == set(pipeline.spec.tasks)
    results, tasks, batch_sizes = _run_engine(pipeline, requests, [rng.randint(0, 4) for _ in requests],
                                              SchedulerConfig(max_batch_size=4))
    assert max(batch_sizes) > 1
    _assert_each_equals_alone(pipeline, requests, results, tasks)


def test_requests_of_different_shapes_never_share_a_step(tiny_pipeline):
    rng = random.Random(5)
    requests = [_random_request(rng, tiny_pipeline.spec, index) for index in range(6)]
    engine = DenoiseEngine(InProcessExecutor(tiny_pipeline.denoiser), SchedulerConfig(max_batch_size=8))
    seen_shapes = []
    original = engine.executor.execute

    def recording_execute(states):
        seen_shapes.append({tuple(state.latents.shape) for state in states})
        original(states)

    engine.executor.execute = recording_execute
    for request in requests:
        engine.add_request(tiny_pipeline.denoise_task(request))
    while engine.has_unfinished():
        engine.step()
    assert seen_shapes and all(len(shapes) == 1 for shapes in seen_shapes)


def test_abort_and_deadline_take_effect_at_the_next_step(tiny_pipeline):
    now = [0.0]
    engine = DenoiseEngine(InProcessExecutor(tiny_pipeline.denoiser), SchedulerConfig(max_batch_size=4),
                           clock=lambda: now[0])
    spec = tiny_pipeline.spec
    for name, deadline in (("keep", None), ("abort", None), ("late", 5.0)):
        request = validate_generation({"prompt": name, "num_inference_steps": 6, "seed": 1}, spec, request_id=name)
        engine.add_request(tiny_pipeline.denoise_task(request), deadline=deadline)
    first = engine.step()
    assert {event.request_id for event in first if isinstance(event, StepEvent)} == {"keep", "abort", "late"}
    engine.abort_request("abort")
    now[0] = 10.0
    second = engine.step()
    dropped = {event.request_id: event.reason for event in second if isinstance(event, DroppedEvent)}
    assert dropped == {"abort": "aborted", "late": "expired"}
    assert {event.request_id for event in second if isinstance(event, StepEvent)} == {"keep"}
    events = []
    while engine.has_unfinished():
        events += engine.step()
    assert [event.request_id for event in events if isinstance(event, FinishedEvent)] == ["keep"]


def test_a_failing_step_fails_its_requests_and_the_engine_goes_on(tiny_pipeline):
    engine = DenoiseEngine(InProcessExecutor(tiny_pipeline.denoiser), SchedulerConfig(max_batch_size=4))
    spec = tiny_pipeline.spec
    request = validate_generation({"prompt": "a", "num_inference_steps": 2, "seed": 1}, spec, request_id="doomed")
    engine.add_request(tiny_pipeline.denoise_task(request))
    original = engine.executor.execute
    engine.executor.execute = lambda states: (_ for _ in ()).throw(RuntimeError("device lost"))
    events = engine.step()
    assert [(e.request_id, e.reason) for e in events] == [("doomed", "failed: RuntimeError('device lost')")]
    engine.executor.execute = original
    survivor = validate_generation({"prompt": "b", "num_inference_steps": 2, "seed": 2}, spec, request_id="next")
    engine.add_request(tiny_pipeline.denoise_task(survivor))
    finished = []
    while engine.has_unfinished():
        finished += [e.request_id for e in engine.step() if isinstance(e, FinishedEvent)]
    assert finished == ["next"]
