"""The ``videoserve`` command line."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from deploy.cli import deploy_app
from engine import video_size

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Serve and run text/image-to-video models (Wan 2.1, Wan 2.2, LTX-Video).")
stderr = Console(stderr=True)

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "videoserve"
# The toy world model: trained here, shipped in the repository, prompts a person can read off the video.
DEFAULT_MODEL = "toy"
CacheDirOption = Annotated[
    Path,
    typer.Option(envvar="VIDEOSERVE_CACHE_DIR", help="Where built-in presets are generated and kept."),
]


def parse_size_option(value: str | None) -> tuple[int | None, int | None]:
    """'832x480' -> (width, height)."""
    if value is None:
        return None, None
    try:
        return video_size.parse_size(value)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


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
    model: Annotated[str | None, typer.Option(
        help=f"Preset name (videoserve models) or a diffusers-format directory (default {DEFAULT_MODEL}, or the "
             "server's default model with --server).")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write: .mp4 or .npy (lossless uint8).")] = Path(
        "outputs/video.mp4"
    ),
    negative_prompt: Annotated[str | None, typer.Option(help="Defaults to the model's own.")] = None,
    image: Annotated[Path | None, typer.Option(help="First frame, for image-to-video models.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random when left out (and printed).")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale; <= 1 turns it off.")] = None,
    guidance_2: Annotated[float | None, typer.Option(
        "--guidance-2", help="Two-expert models (Wan 2.2 A14B): the low-noise expert's guidance scale.")] = None,
    size: Annotated[str | None, typer.Option(help="WIDTHxHEIGHT; the model says which multiple (16 for Wan 2.1).")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames, k x the VAE's time compression + 1.")] = None,
    fps: Annotated[int | None, typer.Option(help="Frames per second of the MP4.")] = None,
    shift: Annotated[float | None, typer.Option(help="Scheduler flow shift.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda when present).")] = None,
    server: Annotated[str | None, typer.Option(help="A videoserve URL: generate there over HTTP instead.")] = None,
    cache_dir: CacheDirOption = DEFAULT_CACHE_DIR,
) -> None:
    """Generate one video, in this process or on a server (--server), with a progress bar."""
    from engine.models.model_registry import ModelNotFoundError, resolve_model
    from engine.request_validation import RequestValidationError, validate_generation
    from engine.stage_placement import default_device
    from engine.staged_pipeline import StagedPipeline, save_frames
    from engine.stages.denoiser import StepProgress

    if output.suffix.lower() not in (".mp4", ".npy"):
        raise typer.BadParameter(f"must end in .mp4 or .npy (got {output.name})", param_hint="--output")
    if server is not None:
        fields = {"prompt": prompt, "model": model, "negative_prompt": negative_prompt,
                  "seed": seed, "num_inference_steps": steps, "guidance_scale": guidance,
                  "guidance_scale_2": guidance_2, "size": size,
                  "num_frames": frames, "fps": fps, "flow_shift": shift}
        _generate_on_server(server, {key: value for key, value in fields.items() if value is not None}, image, output)
        return
    quiet_library_output()
    model = model or DEFAULT_MODEL
    width, height = parse_size_option(size)
    raw = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "width": width,
        "height": height,
        "num_frames": frames,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "guidance_scale_2": guidance_2,
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
    from engine.prompt_grammars import prompt_note

    note = prompt_note(spec.prompt_grammar, prompt)
    if note is not None:
        stderr.print(f"[yellow]note:[/yellow] {note}")

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


def _generate_on_server(server: str, fields: dict, image: Path | None, output: Path) -> None:
    from serve.http_client import ServerError, generate_over_http

    try:
        video = generate_over_http(server, fields, image, output, stderr)
    except (ServerError, OSError) as error:  # httpx errors are OSErrors too
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from None
    typer.echo(f"Saved {output.resolve()} ({video['id']}, {video['size']}, seed {video['seed']})")


@app.command()
def up(
    model: Annotated[list[str] | None, typer.Option(
        help="Preset name or diffusers-format directory; repeat to serve several models in one app (the first is "
             "the default).")] = None,
    host: Annotated[str | None, typer.Option(help="HTTP host (default 127.0.0.1, or the config's).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000, or the config's).")] = None,
    state_dir: Annotated[Path | None, typer.Option(help="Job database and artifacts.")] = None,
    config: Annotated[Path | None, typer.Option(help="A Ray Serve config file (see deploy/videoserve.yaml).")] = None,
    sample_prompt: Annotated[str | None, typer.Option(help="Once up, generate this through the HTTP API.")] = None,
    sample_output: Annotated[Path, typer.Option(help="Where the sample video goes.")] = Path("outputs/sample.mp4"),
    exit_after_sample: Annotated[bool, typer.Option(help="Stop once the sample is saved.")] = False,
    tensor_parallel: Annotated[int | None, typer.Option(min=1, help="Ranks per Denoiser replica, DiT sharded by heads/FFN.")] = None,
    sequence_parallel: Annotated[int | None, typer.Option(min=1, help="Ranks per Denoiser replica, token sequence split (Ulysses).")] = None,
    cfg_parallel: Annotated[int | None, typer.Option(
        min=1, max=2, help="2: conditional and unconditional rows on separate ranks (times --sequence-parallel "
                           "ranks each).")] = None,
    compile_models: Annotated[bool | None, typer.Option(
        "--compile/--no-compile", help="torch.compile the DiT and the VAE decoder at replica start for the "
                                       "model's default size (denoiser.compile, vae_decoder.compile).")] = None,
    layout: Annotated[str | None, typer.Option(
        help="colocated (each model's stages in one replica on one device), disaggregated (one deployment per "
             "stage) or auto (default: colocated on a CPU machine or a one-GPU node).")] = None,
    cache_dir: CacheDirOption = DEFAULT_CACHE_DIR,
) -> None:
    """Start Ray (or join RAY_ADDRESS), deploy every stage, and serve until interrupted."""
    import os
    import signal

    import ray
    from ray import serve

    from serve.app_config import AppConfig
    from serve.cluster_launcher import DeployFailed, default_serve_config, deploy, load_serve_config, with_overrides

    args: dict = {}
    if model:
        args["models"] = list(model)
    if state_dir is not None:
        args["storage"] = {"state_dir": str(state_dir)}
    if layout is not None:
        args["layout"] = layout
    if tensor_parallel is not None or sequence_parallel is not None or cfg_parallel is not None:
        args["parallel"] = {"tensor": tensor_parallel or 1, "sequence": sequence_parallel or 1, "cfg": cfg_parallel or 1}
    if compile_models is not None:
        args["denoiser"] = {"compile": compile_models}
        args["vae_decoder"] = {"compile": compile_models}
    try:
        if config is None:
            app_config = AppConfig.model_validate({"cache_dir": str(cache_dir), **args})
            serve_config = default_serve_config(app_config, host or "127.0.0.1", port or 8000)
        else:  # the file's own settings, except where a flag here says otherwise
            serve_config = with_overrides(load_serve_config(config), args=args, host=host, port=port)
        _say_layout(serve_config)
    except ValueError as error:  # pydantic's ValidationError and PlacementMismatch both name the field
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    http = serve_config.get("http_options", {})
    url = f"http://{http.get('host', '127.0.0.1')}:{http.get('port', 8000)}"
    address = os.environ.get("RAY_ADDRESS")
    with stderr.status("Starting Ray and deploying every stage (first start builds the model preset)..."):
        ray.init(address=address, namespace="serve", log_to_driver=False)
        try:
            deploy(serve_config)
        except DeployFailed as error:
            stderr.print(f"[red]error:[/red] {error}")
            raise typer.Exit(code=1) from None
    stderr.print(f"videoserve is serving at {url}/v1 (OpenAI Videos API); metrics at {url}/metrics")
    try:
        if sample_prompt is not None:
            _generate_on_server(url, {"prompt": sample_prompt, "seed": 42}, None, sample_output)
        if not exit_after_sample:
            stderr.print("Press Ctrl-C to stop.")
            signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        with stderr.status("Stopping..."):
            serve.shutdown()
            ray.shutdown()


def _say_layout(serve_config: dict) -> None:
    """Which layout each videoserve application will run, and why (``auto`` decides by this machine)."""
    from serve.app_config import AppConfig
    from serve.cluster_launcher import IMPORT_PATH
    from serve.layout import resolved_layout

    for application in serve_config.get("applications", []):
        if application.get("import_path") == IMPORT_PATH:
            chosen, why = resolved_layout(AppConfig.model_validate(application.get("args") or {}))
            stderr.print(f"layout: {chosen} ({why})")


config_app = typer.Typer(help="Ray Serve config files for videoserve.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(deploy_app, name="deploy")


@config_app.command("render")
def render_config(
    model: Annotated[list[str] | None, typer.Option(help="Preset name or directory; repeat for several.")] = None,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8000,
    layout: Annotated[str | None, typer.Option(
        help="colocated, disaggregated, or auto (default): auto is resolved on this machine, so render for a "
             "multi-GPU cluster with --layout disaggregated.")] = None,
    cache_dir: CacheDirOption = DEFAULT_CACHE_DIR,
) -> None:
    """Print the default Serve config (every deployment's options), ready to edit."""
    import yaml

    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config

    args: dict = {"models": list(model)} if model else {}
    if cache_dir != DEFAULT_CACHE_DIR:  # several models' shared stages are found from the built presets' files
        args["cache_dir"] = str(cache_dir)
    if layout is not None:
        args["layout"] = layout
    try:
        app_config = AppConfig.model_validate(args)
    except ValueError as error:  # pydantic's ValidationError names the field
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    # Reading several models' files imports diffusers, and with it DeepSpeed, whose logger
    # writes to stdout: keep the YAML on stdout alone (`videoserve config render > file`).
    with contextlib.redirect_stdout(sys.stderr):
        serve_config = default_serve_config(app_config, host, port)
    typer.echo(CONFIG_HEADER + yaml.safe_dump(serve_config, sort_keys=False), nl=False)


CONFIG_HEADER = """\
# videoserve on Ray Serve: `serve run deploy/videoserve.yaml`, `serve deploy deploy/videoserve.yaml`
# or `videoserve up --config deploy/videoserve.yaml`. Generated by `videoserve config render`.
# `args` is videoserve's AppConfig (serve/app_config.py); `deployments` are Ray Serve's own
# per-deployment options (ray_actor_options, autoscaling_config, max_ongoing_requests, ...).
# To pin a stage's replica count, set `num_replicas: N` and `autoscaling_config: null`.
"""


@app.command("eval")
def evaluate_model(
    model: Annotated[str, typer.Option(help="Preset name or a diffusers-format directory.")] = DEFAULT_MODEL,
    prompts: Annotated[str, typer.Option(
        help="'held-out' (the toy grammar's held-out combinations), 'train' (toy scenes seen in training), or a "
             "text file with one prompt a line (any model: flicker only, unless every line is in the toy grammar).")
    ] = "held-out",
    steps: Annotated[list[int] | None, typer.Option(help="Denoising steps; repeat to sweep (default: the model's).")]
    = None,
    guidance: Annotated[list[float] | None, typer.Option(help="Guidance scale; repeat to sweep.")] = None,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per prompt (0, 1, ...).")] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N prompts.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Also write the results as JSON here.")]
    = None,
    cache_dir: CacheDirOption = DEFAULT_CACHE_DIR,
) -> None:
    """Score a model's outputs: prompt adherence on the toy model (colour, shape and motion read off the
    frames and compared with the prompt), flicker (frame-to-frame error after motion compensation) for any."""
    import json
    from dataclasses import asdict

    from engine.models.model_registry import ModelNotFoundError, resolve_model
    from engine.quality.evaluation import EvalSettings, evaluate, pipeline_generator
    from engine.staged_pipeline import StagedPipeline

    quiet_library_output()
    try:
        spec = resolve_model(model, cache_dir)
    except ModelNotFoundError as error:
        stderr.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None
    prompt_list = _eval_prompts(prompts)[:limit]
    generate = pipeline_generator(StagedPipeline.load(spec))
    results = []
    for step_count in steps or [None]:
        for scale in guidance or [None]:
            settings = EvalSettings(num_inference_steps=step_count, guidance_scale=scale, seeds=tuple(range(seeds)))
            with stderr.status(f"{spec.name}: {len(prompt_list) * seeds} clips, steps {step_count or 'default'}, "
                               f"guidance {scale or 'default'}..."):
                result = evaluate(generate, prompt_list, settings)
            results.append(result)
            adherence = result.adherence or {}
            typer.echo(f"steps {step_count or spec.defaults.num_inference_steps:>3}  guidance "
                       f"{scale if scale is not None else spec.defaults.guidance_scale:>4}  "
                       + (f"colour+motion {adherence['colour_and_motion']:.1%}  full {adherence['full']:.1%}  "
                          f"shape {adherence['shape']:.1%}  " if adherence else "")
                       + f"flicker {result.flicker:.2f}  ({result.clips} clips, {result.seconds_per_clip:.2f} s each)")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps({"model": spec.name, "prompts": prompts,
                                      "results": [asdict(result) for result in results]}, indent=2))


def _eval_prompts(which: str) -> list[str]:
    import numpy as np

    from engine.toy_world.grammar import held_out_prompts, sample_scene, scene_to_prompt

    if which == "held-out":
        return held_out_prompts()
    if which == "train":
        rng = np.random.default_rng(0)
        return [scene_to_prompt(sample_scene(rng, max_objects=1)) for _ in range(28)]
    path = Path(which)
    if not path.is_file():
        raise typer.BadParameter(f"'held-out', 'train' or a prompt file (got {which!r})", param_hint="--prompts")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@app.command()
def models() -> None:
    """List the model presets: shipped (trained here), built-in (random weights, offline) and the published
    checkpoints."""
    import json

    from engine.models.builtin_presets import BUILTIN_PRESETS, PRESET_METADATA_FILE
    from engine.families import family_for_pipeline
    from engine.models.model_registry import HUB_PRESETS, model_tasks
    from engine.models.shipped_presets import SHIPPED_PRESETS

    def tasks(values) -> str:
        return "+".join(sorted(task.value for task in values))

    for name, directory in SHIPPED_PRESETS.items():
        description = json.loads((directory / PRESET_METADATA_FILE).read_text())["description"]
        typer.echo(f"{name:20} shipped   wan  {tasks(model_tasks(name)):8} {description}")
    for name, preset in BUILTIN_PRESETS.items():
        typer.echo(f"{name:20} built-in  {preset.family:4} {tasks(preset.tasks):8} {preset.description}")
    for name, hub_preset in HUB_PRESETS.items():
        family = family_for_pipeline(hub_preset.pipeline_class, name).name
        typer.echo(f"{name:20} hub       {family:4} {tasks(hub_preset.tasks):8} {hub_preset.repo_id}")


if __name__ == "__main__":
    app()
