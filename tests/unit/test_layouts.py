"""The two layouts: which one an app runs, the deployments each gives, and the engine's turn-taking
that lets one replica hold every model stage (served: tests/cluster/test_colocated_layout.py)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve.app_config import AppConfig
from serve.layout import resolved_layout


def _config(**fields) -> AppConfig:
    return AppConfig.model_validate({"cache_dir": "/nonexistent-cache", **fields})


def test_auto_is_colocated_on_a_cpu_machine_and_says_why():
    layout, why = resolved_layout(_config(device="cpu"))
    assert layout == "colocated" and "CPU" in why


def test_auto_is_disaggregated_for_a_parallel_gang():
    assert resolved_layout(_config(device="cpu", parallel={"sequence": 2}))[0] == "disaggregated"


def test_auto_is_colocated_on_one_named_gpu_and_disaggregated_on_a_node_of_several(monkeypatch):
    import torch

    assert resolved_layout(_config(device="cuda:1"))[0] == "colocated"
    # No GPU on this machine: the count torch would report on a 4-GPU node is stood in.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    layout, why = resolved_layout(_config(device="cuda"))
    assert layout == "disaggregated" and "4 GPUs" in why
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolved_layout(_config(device="cuda"))[0] == "colocated"


def test_an_explicit_layout_wins_and_colocated_refuses_a_gang():
    assert resolved_layout(_config(device="cpu", layout="disaggregated"))[0] == "disaggregated"
    with pytest.raises(ValueError, match="layout: colocated"):
        _config(layout="colocated", parallel={"tensor": 2})
    with pytest.raises(ValueError, match="layout"):
        _config(layout="sideways")


def test_colocated_decodes_run_beside_the_steps_on_a_cpu_and_between_them_on_a_gpu():
    from serve.deployments.colocated_pipeline import decodes_on_own_thread

    assert decodes_on_own_thread(_config(device="cpu"))
    assert not decodes_on_own_thread(_config(device="cuda:0"))
    assert not decodes_on_own_thread(_config(device="cpu", vae_decoder={"colocated_thread": "engine"}))
    assert decodes_on_own_thread(_config(device="cuda:0", vae_decoder={"colocated_thread": "own"}))
    with pytest.raises(ValueError, match="colocated_thread"):
        _config(vae_decoder={"colocated_thread": "sideways"})


def test_colocated_is_one_pipeline_per_model_that_takes_every_stage_of_its_requests(preset_cache):
    from serve.app_builder import deployment_names, deployment_options
    from serve.model_stages import app_stage_plan

    config = AppConfig.model_validate({
        "models": ["tiny", {"source": "tiny-i2v", "denoiser_options": {"max_ongoing_requests": 7}}],
        "cache_dir": str(preset_cache), "device": "cpu", "layout": "colocated",
        "stage_options": {"Pipeline": {"ray_actor_options": {"num_cpus": 2}}}})
    assert deployment_names(config) == ["VideoAPI", "Pipeline-tiny", "Pipeline-tiny-i2v", "PostProcessor"]
    plan = app_stage_plan(config)
    assert plan.routes == {
        "tiny": dict.fromkeys(["TextEncoder", "Denoiser", "VaeDecoder"], "Pipeline-tiny"),
        "tiny-i2v": dict.fromkeys(["TextEncoder", "ImageConditioner", "Denoiser", "VaeDecoder"], "Pipeline-tiny-i2v"),
    }
    options = deployment_options(config)
    assert options["Pipeline-tiny"]["ray_actor_options"]["num_cpus"] == 2  # stage_options.Pipeline
    assert options["Pipeline-tiny-i2v"]["max_ongoing_requests"] == 7  # the model's denoiser_options
    assert "policy" in options["Pipeline-tiny"]["autoscaling_config"]  # scales on its engine's backlog
    single = AppConfig.model_validate({"models": ["tiny"], "cache_dir": str(preset_cache), "layout": "colocated"})
    assert deployment_names(single) == ["VideoAPI", "Pipeline", "PostProcessor"]


def test_a_rendered_config_writes_the_layout_down(preset_cache):
    from serve.cluster_launcher import default_serve_config

    rendered = default_serve_config(AppConfig.model_validate({"models": ["tiny"], "cache_dir": str(preset_cache),
                                                              "device": "cpu"}))
    application = rendered["applications"][0]
    assert application["args"]["layout"] == "colocated"
    assert [deployment["name"] for deployment in application["deployments"]] == ["VideoAPI", "Pipeline",
                                                                                 "PostProcessor"]


def test_work_run_on_the_engine_takes_turns_with_denoising_steps(tiny_pipeline):
    from engine.batching.async_denoise_engine import AsyncDenoiseEngine, DenoiseDone
    from engine.batching.denoise_engine import InProcessExecutor
    from engine.batching.denoise_scheduler import SchedulerConfig
    from engine.request_validation import validate_generation

    order: list[str] = []
    executor = InProcessExecutor(tiny_pipeline.denoiser)
    step = executor.execute
    executor.execute = lambda states: (order.append("step"), step(states))
    engine = AsyncDenoiseEngine(executor, SchedulerConfig(max_batch_size=2))
    request = validate_generation({"prompt": "a", "seed": 1, "num_inference_steps": 6}, tiny_pipeline.spec)

    async def main():
        task = tiny_pipeline.denoise_task(request)
        threads = []
        async for event in engine.denoise(task):
            if isinstance(event, DenoiseDone):
                return threads
            if event.step in (2, 4):  # between steps: the call waits for the step in flight
                threads.append(await engine.run(lambda: (order.append("call"),
                                                         threading.current_thread().name)[1]))

    try:
        threads = asyncio.run(main())
    finally:
        engine.shutdown()
    assert threads == ["denoise-engine", "denoise-engine"]  # the engine's own thread, never concurrently
    assert order.count("step") == 6 and order.count("call") == 2
    assert order[0] == "step" and order[-1] == "step" and "call" not in (order[0], order[-1])


def test_a_call_that_raises_fails_its_caller_and_the_engine_goes_on(tiny_pipeline):
    from engine.batching.async_denoise_engine import AsyncDenoiseEngine
    from engine.batching.denoise_engine import InProcessExecutor
    from engine.batching.denoise_scheduler import SchedulerConfig

    engine = AsyncDenoiseEngine(InProcessExecutor(tiny_pipeline.denoiser), SchedulerConfig(max_batch_size=2))
    try:
        with pytest.raises(ZeroDivisionError):
            asyncio.run(engine.run(lambda: 1 / 0))
        assert asyncio.run(engine.run(lambda value: value * 2, 21)) == 42
        assert engine.run_blocking(sum, [1, 2, 3]) == 6
    finally:
        engine.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        engine.run_blocking(sum, [1])
