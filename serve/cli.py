"""The ``videoserve`` command line."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Serve and run Wan text/image-to-video models.")
stderr = Console(stderr=True)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "videoserve"
CacheDirOption = Annotated[
    Path,
    typer.Option(envvar="VIDEOSERVE_CACHE_DIR", help="Where built-in presets are generated and kept."),
]


def parse_size(value: str | None) -> tuple[int | None, int | None]:
    """'832x480' -> (width, height)."""
    if value is None:
        return None, None
    try:
        width, height = (int(part) for part in value.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"size must look like WIDTHxHEIGHT, e.g. 832x480 (got {value!r})") from None
    return width, height


def quiet_library_output() -> None:
    """Our progress bar replaces the libraries' per-file loading bars and chatter."""
    import diffusers
    import transformers

    for library in (diffusers.utils.logging, transformers.utils.logging):
        library.disable_progress_bar()
        library.set_verbosity_error()


@app.command()
def generate(
    prompt: Annotated[str, typer.Option(help="What the video shows.")],
    model: Annotated[str, typer.Option(help="Preset name or a diffusers-format Wan directory.")] = "tiny",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write: .mp4 or .npy (lossless uint8).")] = Path(
        "outputs/video.mp4"
    ),
    negative_prompt: Annotated[str | None, typer.Option(help="Defaults to the model's own.")] = None,
    image: Annotated[Path | None, typer.Option(help="First frame, for image-to-video models.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random when left out (and printed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale; <= 1 turns it off.")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT, multiples of 16.")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames, 4k+1.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the MP4.")] = None,
    shift: Annotated[float | None, typer.Option(help="Scheduler flow shift.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when present).")] = None,
    cache_dir: CacheDirOption = DEFAULT_CACHE_DIR,
) -> None:
    """Generate one video in this process, with a progress bar."""
    from engine.model_registry import ModelNotFoundError, resolve_model
    from engine.request_validation import RequestValidationError, validate_generation
    from engine.stage_placement import default_device
    from engine.staged_pipeline import StagedPipeline, save_frames
    from engine.stages.denoiser import StepProgress

    if output.suffix.lower() not in (".mp4", ".npy"):
        raise typer.BadParameter(f"must end in .mp4 or .npy (got {output.name})", param_hint="--output")
    quiet_library_output()
    width, height = parse_size(size)
    raw = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "width": width,
        "height": height,
        "num_frames": frames,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "flow_shift": shift,
        "seed": seed,
        "fps": fps,
    }
    if image is not None:
        try:
            raw["image"] = image.read_bytes()
        except OSError as error:
            raise typer.BadParameter(str(error), param_hint="--image") from None
    try:
        with stderr.status(f"Loading {model}..."):
            spec = resolve_model(model, cache_dir)
            request = validate_generation({key: value for key, value in raw.items() if value is not None}, spec)
            started = time.perf_counter()
            pipeline = StagedPipeline.load(spec, device or default_device())
            stderr.print(f"Loaded {spec.name} in {time.perf_counter() - started:.1f}s ({spec.source})")
    except (ModelNotFoundError, RequestValidationError) as error:
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None

    from serve.progress_display import step_progress

    started = time.perf_counter()
    with step_progress(stderr) as progress:
        bar = progress.add_task("denoising", total=request.num_inference_steps)

        def on_step(update: StepProgress) -> None:
            progress.update(bar, completed=update.step)

        with stderr.status("encoding prompt and conditioning..."):
            task = pipeline.denoise_task(request)
        latents = pipeline.denoiser.denoise(task, on_step)
    with stderr.status("decoding and writing..."):
        result = pipeline.vae_decoder.decode(latents, fps=request.fps)
        artifact = save_frames(request, result, output)
    stderr.print(f"Generated in {time.perf_counter() - started:.1f}s")
    typer.echo(
        f"Saved {output.resolve()} ({artifact.num_frames} frames, {artifact.width}x{artifact.height}, "
        f"{artifact.fps} fps, seed {artifact.seed})"
    )


@app.command()
def models() -> None:
    """List the model presets."""
    from engine.builtin_presets import BUILTIN_PRESETS
    from engine.model_registry import HUB_PRESETS

    for name, preset in BUILTIN_PRESETS.items():
        typer.echo(f"{name:22} built-in  {preset.description}")
    for name, hub_preset in HUB_PRESETS.items():
        typer.echo(f"{name:22} hub       {hub_preset.repo_id}")


if __name__ == "__main__":
    app()
