"""Per-stage timings of one request, and the whole staged request against diffusers.

    python -m benchmarks.stage_timings [--model bench] [--repeats 7]

Every figure is the median of ``--repeats`` runs after one warm-up run, measured in
this one process, so the staged/diffusers ratio compares like with like.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from benchmarks.diffusers_baseline import DiffusersRunner
from benchmarks.machine import describe_machine
from benchmarks.workload import WorkloadRequest
from engine.models.model_registry import resolve_model
from engine.stage_types import TextRequest
from engine.request_validation import validate_generation
from engine.staged_pipeline import StagedPipeline
from engine.video_io import write_mp4

DEFAULT_CACHE_DIR = Path(os.environ.get("VIDEOSERVE_CACHE_DIR", Path.home() / ".cache" / "videoserve"))


def median_seconds(run, repeats: int, prepare=None) -> float:
    """Median wall time of ``run(prepare())``; ``prepare`` is not timed."""
    prepare = prepare or (lambda: None)
    run(prepare())  # warm-up: first-call allocations and lazy initialisation
    samples = []
    for _ in range(repeats):
        prepared = prepare()
        started = time.perf_counter()
        run(prepared)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main(
    model: Annotated[str, typer.Option(help="Preset or directory.")] = "bench",
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median reported).")] = 7,
    output: Annotated[Path, typer.Option(help="JSON file for the figures.")] = Path("benchmarks/out/stage_timings.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    spec = resolve_model(model, cache_dir)
    staged = StagedPipeline.load(spec)
    request = validate_generation({"prompt": "a red car drives through a city street at night", "seed": 0}, spec)
    task = staged.denoise_task(request)
    denoiser = staged.denoiser
    latents = denoiser.denoise(task)
    frames = staged.vae_decoder.decode(latents, fps=request.fps)

    def first_step(with_guidance: bool) -> float:
        step_task = task if with_guidance else _without_guidance(task)
        return median_seconds(lambda state: denoiser.step([state]), repeats, lambda: denoiser.start(step_task))

    with tempfile.TemporaryDirectory() as scratch:
        mp4_path = Path(scratch) / "video.mp4"
        figures = {
            "text_encode_s": median_seconds(lambda _: staged.text_encoder.encode(TextRequest.of(request)), repeats),
            "dit_step_batch1_no_cfg_s": first_step(with_guidance=False),
            "dit_step_batch1_cfg_s": first_step(with_guidance=True),
            "denoise_s": median_seconds(lambda _: denoiser.denoise(task), repeats),
            "vae_decode_s": median_seconds(lambda _: staged.vae_decoder.decode(latents, fps=request.fps), repeats),
            "mp4_encode_s": median_seconds(lambda _: write_mp4(frames, mp4_path), repeats),
            "staged_request_s": median_seconds(lambda _: staged.generate(request), repeats),
        }
    reference = DiffusersRunner(spec)
    same_request = WorkloadRequest(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        size=f"{request.width}x{request.height}",
        num_frames=request.num_frames,
        num_inference_steps=request.num_inference_steps,
        guidance_scale=request.guidance_scale,
        seed=request.seed,
        image=None,
    )

    def diffusers_call(_):
        reference(same_request)

    figures["diffusers_request_s"] = median_seconds(diffusers_call, repeats)
    figures["diffusers_latents_only_s"] = median_seconds(lambda _: reference(same_request, output_type="latent"),
                                                         repeats)
    figures["staged_over_diffusers"] = figures["staged_request_s"] / figures["diffusers_request_s"]
    # How much of a request the denoising loop is: what step caching and step batching act on.
    # In our stack, whose optimisations make the loop cheaper, and in diffusers' own pipeline
    # (the model's own proportions: the pipeline up to its latents, less the text encoding).
    figures["denoise_share_of_request"] = figures["denoise_s"] / figures["staged_request_s"]
    figures["diffusers_denoise_share_of_request"] = (
        (figures["diffusers_latents_only_s"] - figures["text_encode_s"]) / figures["diffusers_request_s"])
    report = {
        "model": spec.name,
        "request": {
            "size": f"{request.width}x{request.height}",
            "num_frames": request.num_frames,
            "steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
        },
        "repeats": repeats,
        "machine": describe_machine(),
        "figures": figures,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps(report, indent=2))


def _without_guidance(task):
    from dataclasses import replace

    return replace(task, guidance_scale=1.0, text=replace(task.text, negative_prompt_embeds=None))


if __name__ == "__main__":
    typer.run(main)
