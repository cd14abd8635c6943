"""The peer baseline: the load test's workload through plain diffusers, one request at a time.

    python -m benchmarks.diffusers_baseline --model bench --requests 20 --output benchmarks/out/baseline.json
    python -m benchmarks.diffusers_baseline --model bench --requests 60 --rate 0.5 --duration 120 --seed 1 \\
        --output benchmarks/out/baseline_r0.5.json

This is what serving Wan without videoserve looks like: one process, one
``WanPipeline`` / ``WanImageToVideoPipeline`` loaded with ``from_pretrained``, each
request's ``__call__`` run to the end before the next starts. With ``--rate`` the
requests are the ones the load generator sends with the same ``--rate --duration
--requests (= --max-requests) --mix --seed``, and the report adds what their end-to-end
latencies would have been had that sequential server served the Poisson arrivals FIFO.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.load_generator import latency_summary
from benchmarks.machine import describe_machine
from benchmarks.workload import WorkloadMix, WorkloadRequest, build_workload, open_loop_plan
from engine.models.model_spec import ModelSpec

DEFAULT_CACHE_DIR = Path(os.environ.get("VIDEOSERVE_CACHE_DIR", Path.home() / ".cache" / "videoserve"))


@dataclass(frozen=True)
class FifoTiming:
    """One request in a simulated single-worker FIFO server, in seconds on the arrivals' clock."""

    arrival_s: float
    start_s: float
    finish_s: float

    @property
    def queue_wait_s(self) -> float:
        return self.start_s - self.arrival_s

    @property
    def latency_s(self) -> float:
        return self.finish_s - self.arrival_s


def simulate_fifo(arrivals: Sequence[float], service_times: Sequence[float]) -> list[FifoTiming]:
    """Each request starts when it has arrived and the previous one has finished."""
    if len(arrivals) != len(service_times):
        raise ValueError(f"{len(arrivals)} arrivals but {len(service_times)} service times")
    if any(later < earlier for earlier, later in itertools.pairwise(arrivals)):
        raise ValueError("arrivals must be in non-decreasing order")
    if any(service < 0 for service in service_times):
        raise ValueError("service times must be >= 0")
    timings = []
    free_at = float("-inf")
    for arrival, service in zip(arrivals, service_times):
        start = max(arrival, free_at)
        free_at = start + service
        timings.append(FifoTiming(arrival_s=arrival, start_s=start, finish_s=free_at))
    return timings


def fifo_summary(timings: Sequence[FifoTiming]) -> dict[str, Any]:
    """The same figures the load generator reports, for the simulated sequential server."""
    if not timings:
        raise ValueError("no requests to summarise")
    window = timings[-1].finish_s - timings[0].arrival_s
    return {
        "completed": len(timings),
        "window_s": window,
        "throughput_videos_per_s": len(timings) / window if window > 0 else None,
        "latency_s": latency_summary([timing.latency_s for timing in timings]),
        "queue_wait_s": latency_summary([timing.queue_wait_s for timing in timings], quantiles=(50, 95)),
    }


def check_task(spec: ModelSpec, requests: Sequence[WorkloadRequest]) -> None:
    """Refuse requests the model's pipeline cannot run, before loading it."""
    for index, request in enumerate(requests):
        task = spec.task_for(request.is_image_to_video)
        if not spec.supports(task) or (spec.needs_image and not request.is_image_to_video):
            runs = " and ".join(sorted(task.value for task in spec.tasks))
            raise ValueError(f"i2v_fraction: request {index} ({task.value}) does not fit {spec.name}, which runs "
                             f"{runs} only")


class DiffusersRunner:
    """One diffusers pipeline, called the way a user of diffusers would call it."""

    def __init__(self, spec: ModelSpec):
        import diffusers

        from engine.families import family_of

        self.spec = spec
        # One pipeline per task the model runs (Wan 2.2 TI2V and LTX run both from one directory).
        self.pipelines = {}
        for task in spec.tasks:
            pipeline_class = getattr(diffusers, family_of(spec).reference_pipelines[task])
            self.pipelines[task] = pipeline_class.from_pretrained(spec.source)
            self.pipelines[task].set_progress_bar_config(disable=True)

    def __call__(self, request: WorkloadRequest, output_type: str = "np") -> float:
        """Run one request to the end; returns its wall time in seconds. ``output_type="latent"``
        stops after the denoising loop, as diffusers' pipelines do (no VAE decode)."""
        import torch

        kwargs: dict[str, Any] = {}
        if self.spec.family == "ltx":  # its rotary scale and decoder take these; the server passes the model's
            defaults = self.spec.defaults
            kwargs.update(frame_rate=defaults.fps, decode_timestep=defaults.decode_timestep,
                          decode_noise_scale=defaults.decode_noise_scale)
        if request.image is not None:
            from PIL import Image

            kwargs["image"] = Image.open(io.BytesIO(request.image)).convert("RGB")
        pipeline = self.pipelines[self.spec.task_for(request.image is not None)]
        started = time.perf_counter()
        pipeline(
            prompt=request.prompt,
            # What the server does for a request without one: the model's default.
            negative_prompt=self.spec.defaults.negative_prompt if request.negative_prompt is None
            else request.negative_prompt,
            height=request.height,
            width=request.width,
            num_frames=request.num_frames,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(request.seed),
            output_type=output_type,
            **kwargs,
        )
        return time.perf_counter() - started


def run_baseline(model: str, requests: Sequence[WorkloadRequest], cache_dir: Path = DEFAULT_CACHE_DIR,
                 arrivals: Sequence[float] | None = None, warmup: bool = True) -> dict[str, Any]:
    """Run ``requests`` one after another through diffusers and report throughput and latency.

    With ``arrivals`` (offsets in seconds, one per request) the report also holds the
    FIFO simulation of those arrivals on this sequential server (``open_loop``).
    """
    if not requests:
        raise ValueError("requests: need at least one request")
    if arrivals is not None and len(arrivals) != len(requests):
        raise ValueError(f"arrivals: {len(arrivals)} offsets for {len(requests)} requests")
    from engine.models.model_registry import resolve_model

    spec = resolve_model(model, cache_dir)
    check_task(spec, requests)
    runner = DiffusersRunner(spec)
    if warmup:
        runner(requests[0])  # first-call allocations and lazy initialisation, as the server has had them
    started = time.perf_counter()
    service_times = [runner(request) for request in requests]
    elapsed = time.perf_counter() - started
    report: dict[str, Any] = {
        "kind": "diffusers_baseline",
        "model": runner.spec.name,
        "source": runner.spec.source,
        "machine": describe_machine(),
        "summary": {
            "completed": len(requests),
            "elapsed_s": elapsed,
            "throughput_videos_per_s": len(requests) / elapsed,
            "request_latency_s": latency_summary(service_times, quantiles=(50, 95)),
        },
        "requests": [
            {"index": index, "size": request.size, "num_frames": request.num_frames,
             "num_inference_steps": request.num_inference_steps, "guidance_scale": request.guidance_scale,
             "image_to_video": request.is_image_to_video, "service_s": seconds}
            for index, (request, seconds) in enumerate(zip(requests, service_times))
        ],
    }
    if arrivals is not None:
        timings = simulate_fifo(arrivals, service_times)
        report["open_loop"] = {**fifo_summary(timings), "timings": [asdict(timing) for timing in timings]}
    return report


def main(
    model: Annotated[str, typer.Option(help="Preset or directory.")] = "bench",
    requests: Annotated[int, typer.Option(help="Requests to run (the load generator's --max-requests).")] = 20,
    mix: Annotated[str, typer.Option(help="'default' or a WorkloadMix JSON file.")] = "default",
    seed: Annotated[int, typer.Option(help="The load generator's --seed.")] = 0,
    rate: Annotated[float | None, typer.Option(help="Also simulate these Poisson arrivals (per second) FIFO.")] = None,
    duration: Annotated[float, typer.Option(help="With --rate: the load generator's --duration.")] = 60.0,
    output: Annotated[Path, typer.Option(help="JSON report.")] = Path("benchmarks/out/diffusers_baseline.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    try:
        workload_mix = WorkloadMix.load(mix)
        if rate is None:
            arrivals, workload = None, build_workload(workload_mix, requests, seed)
        else:
            arrivals, workload = open_loop_plan(workload_mix, rate, duration, requests, seed)
        report = run_baseline(model, workload, cache_dir, arrivals)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    report["workload"] = {"mix": workload_mix.model_dump(mode="json"), "seed": seed, "requests": requests,
                          "rate_per_s": rate, "duration_s": duration if rate is not None else None}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    printed = {"output": str(output), "summary": report["summary"]}
    if "open_loop" in report:
        printed["open_loop"] = {key: value for key, value in report["open_loop"].items() if key != "timings"}
    typer.echo(json.dumps(printed, indent=2))


if __name__ == "__main__":
    typer.run(main)
