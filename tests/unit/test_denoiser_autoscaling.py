"""The Denoiser's autoscaling policy: replicas follow the backlog inside the engines."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from serve.denoiser_autoscaling import BACKLOG_METRIC, denoiser_autoscaling_policy, desired_replicas


@pytest.mark.parametrize(
    "backlog,current,target,expected",
    [
        ({}, 3, 40, 3),  # no report yet: keep what runs
        ({"r1": 0.0}, 2, 40, 1),
        ({"r1": 40.0}, 1, 40, 1),
        ({"r1": 41.0}, 1, 40, 2),
        ({"r1": 100.0, "r2": 90.0}, 2, 40, 5),
    ],
)
def test_desired_replicas_follow_the_engine_backlog(backlog, current, target, expected):
    assert desired_replicas(backlog, current, target) == expected


def test_target_must_be_positive():
    with pytest.raises(ValueError, match="target_backlog_steps"):
        desired_replicas({"r1": 1.0}, 1, 0)


def test_policy_reads_the_replicas_custom_metric():
    # Serve builds an AutoscalingContext; the policy reads only these three attributes.
    context = SimpleNamespace(aggregated_metrics={BACKLOG_METRIC: {"a": 70.0, "b": 15.0}}, current_num_replicas=2,
                              policy_state={"kept": True})
    assert denoiser_autoscaling_policy(context, target_backlog_steps=20) == (5, {"kept": True})


def test_denoiser_reports_its_engine_backlog(tiny_spec, preset_cache):
    import asyncio
    import threading

    import torch

    from engine.batching.async_denoise_engine import AsyncDenoiseEngine
    from engine.batching.denoise_scheduler import SchedulerConfig
    from engine.request_validation import validate_generation
    from engine.stage_types import TextEmbeddings
    from serve.app_config import AppConfig
    from serve.deployments.denoiser import DenoiserDeployment

    # The deployment class is constructed here without Ray, as Serve would in a replica.
    deployment = DenoiserDeployment(AppConfig.model_validate(
        {"models": ["tiny"], "cache_dir": str(preset_cache), "device": "cpu", "denoiser": {"max_batch_size": 2}}))
    assert deployment.record_autoscaling_stats() == {"engine_requests": 0.0, "engine_step_batches": 0.0}
    # Hold the engine's thread before its first look at the queue and inside its first
    # step, so the backlog is read at a known point: all three requests added, none run.
    deployment.engine.shutdown()
    executor, may_start, may_step, in_step = deployment.engine.executor, threading.Event(), threading.Event(), threading.Event()
    real_execute = executor.execute

    def gated_execute(states):
        in_step.set()
        may_step.wait(60)
        real_execute(states)

    executor.execute = gated_execute
    deployment.engine = AsyncDenoiseEngine(executor, SchedulerConfig(max_batch_size=2),
                                           thread_initializer=lambda: may_start.wait(60))
    text = TextEmbeddings(prompt_embeds=torch.zeros(1, 512, 32), negative_prompt_embeds=None)

    async def scenario():
        streams = []
        for seed in range(3):
            request = validate_generation({"prompt": "a", "num_inference_steps": 4, "guidance_scale": 1.0,
                                           "seed": seed}, tiny_spec, request_id=f"r{seed}")
            stream = deployment.denoise(request, text, None)
            streams.append(asyncio.ensure_future(_drain(stream)))
        await asyncio.sleep(0)  # every stream has queued its add
        while deployment.engine._inbox.qsize() < 3:
            await asyncio.sleep(0.01)
        may_start.set()
        await asyncio.to_thread(in_step.wait, 60)
        # Three requests of four steps, two per step: 4 steps for the first pair, 4 for the third.
        held = deployment.record_autoscaling_stats()
        may_step.set()
        await asyncio.gather(*streams)
        return held, deployment.record_autoscaling_stats()

    held, drained = asyncio.run(scenario())
    assert held == {"engine_requests": 3.0, "engine_step_batches": 8.0}
    assert drained == {"engine_requests": 0.0, "engine_step_batches": 0.0}


async def _drain(stream) -> None:
    async for _ in stream:
        pass
