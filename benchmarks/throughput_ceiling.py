"""The most served/diffusers throughput this machine could give, measured: the DiT alone at its best.

    python -m benchmarks.throughput_ceiling --model bench --rows 1,2,4,8,16 --repeats 5 [--compile] \\
        --output benchmarks/out/throughput_ceiling.json

A served video needs at least its DiT forwards: ``steps`` steps of two rows each with
classifier-free guidance. However it is batched or spread over processes, the machine
cannot run those rows faster than its best measured rows/s, so

    ceiling = (best DiT rows/s ÷ rows per video) ÷ diffusers' sequential videos/s

bounds the served ÷ diffusers throughput ratio from above. The bound is generous: it
leaves out the text encoder, the VAE, the MP4 encode and every serving cost, which a
real server pays on the same cores. Candidates for "best" are one process using every
core at each batch size (eager, and ``--compile``d as the served Denoiser can run) and
several processes splitting the cores, all running forwards at once (what several
Denoiser replicas on one machine would do). The diffusers baseline runs in the same
process before and after them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from benchmarks.dit_mfu import dit_inputs, load_transformer, median_seconds, parse_batch_sizes

DEFAULT_CACHE_DIR = Path(os.environ.get("VIDEOSERVE_CACHE_DIR", Path.home() / ".cache" / "videoserve"))


def ceiling_ratio(best_rows_per_s: float, rows_per_video: int, baseline_videos_per_s: float) -> float:
    if rows_per_video < 1 or baseline_videos_per_s <= 0 or best_rows_per_s <= 0:
        raise ValueError("rows_per_video, baseline_videos_per_s and best_rows_per_s must be positive")
    return best_rows_per_s / rows_per_video / baseline_videos_per_s


def _time_rows(spec, transformer, rows: int, repeats: int) -> float:
    inputs = dit_inputs(spec, transformer, rows)
    with torch.no_grad():
        return median_seconds(lambda: transformer(**inputs), repeats)


def _split_worker(model: str, cache_dir: str, threads: int, rows: int, repeats: int, barrier, results) -> None:
    """One of several processes: load the DiT, wait for the others, then time forwards while they do too."""
    from engine.models.model_registry import resolve_model

    torch.set_num_threads(threads)
    spec = resolve_model(model, Path(cache_dir))
    transformer = load_transformer(spec)
    inputs = dit_inputs(spec, transformer, rows)
    with torch.no_grad():
        transformer(**inputs)
        barrier.wait()
        results.put(median_seconds(lambda: transformer(**inputs), repeats))


def split_rows_per_s(model: str, cache_dir: Path, processes: int, threads: int, rows: int, repeats: int) -> float:
    """Rows/s of ``processes`` processes of ``threads`` threads each, all running ``rows``-row forwards at once."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_split_worker, args=(model, str(cache_dir), threads, rows, repeats, barrier,
                                                           results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    seconds = [results.get(timeout=1800) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rows / value for value in seconds)


def main(
    model: Annotated[str, typer.Option(help="Preset or directory.")] = "bench",
    rows: Annotated[str, typer.Option(help="Rows per forward, comma-separated.")] = "1,2,4,8,16",
    repeats: Annotated[int, typer.Option(help="Timed runs per figure (median reported).")] = 5,
    baseline_requests: Annotated[int, typer.Option(help="Sequential diffusers calls timed.")] = 5,
    compile_dit: Annotated[bool, typer.Option("--compile/--no-compile", help="Also time the compiled DiT.")] = False,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/out/throughput_ceiling.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    from benchmarks.diffusers_baseline import run_baseline
    from benchmarks.machine import describe_machine
    from benchmarks.workload import WorkloadMix, build_workload
    from engine.models.model_registry import resolve_model

    try:
        sizes = parse_batch_sizes(rows)
    except ValueError as error:
        typer.echo(f"error: --rows: {error}", err=True)
        raise typer.Exit(2) from None
    spec = resolve_model(model, cache_dir)
    defaults = spec.defaults
    size = f"{defaults.width}x{defaults.height}"
    mix = WorkloadMix(sizes={size: 1.0}, repeated_prompt_fraction=0.0, num_frames=(defaults.num_frames,),
                      steps=(defaults.num_inference_steps,), guidance_scales=(defaults.guidance_scale,))
    def baseline(seed: int) -> dict[str, Any]:
        return run_baseline(model, build_workload(mix, baseline_requests, seed=seed), cache_dir)["summary"]

    # Before and after the DiT timings, as in served_vs_diffusers: a drift in a shared
    # machine's speed then shows instead of skewing the bound.
    typer.echo("diffusers baseline...")
    baseline_before = baseline(100)
    rows_per_video = defaults.num_inference_steps * (2 if defaults.guidance_scale > 1 else 1)

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    transformer = load_transformer(spec)
    layouts: list[dict[str, Any]] = []
    typer.echo("one process, every core...")
    for count in sizes:
        seconds = _time_rows(spec, transformer, count, repeats)
        layouts.append({"layout": f"1 process x {cores} threads, eager", "rows": count, "rows_per_s": count / seconds})
    if compile_dit:
        typer.echo("one process, compiled...")
        compiled = torch.compile(transformer)
        for count in sizes:
            inputs = dit_inputs(spec, transformer, count)
            torch._dynamo.mark_dynamic(inputs["hidden_states"], 0)
            with torch.no_grad():
                seconds = median_seconds(lambda inputs=inputs: compiled(**inputs), repeats)
            layouts.append({"layout": f"1 process x {cores} threads, compiled", "rows": count,
                            "rows_per_s": count / seconds})
    for processes in (count for count in (2, 4) if count <= cores and cores % count == 0):
        typer.echo(f"{processes} processes at once...")
        for count in sizes:
            layouts.append({"layout": f"{processes} processes x {cores // processes} threads, eager", "rows": count,
                            "rows_per_s": split_rows_per_s(model, cache_dir, processes, cores // processes, count,
                                                           repeats)})
    typer.echo("diffusers baseline again...")
    baseline_after = baseline(150)
    baseline_videos_per_s = statistics.median(
        [run["throughput_videos_per_s"] for run in (baseline_before, baseline_after)])
    best = max(layouts, key=lambda layout: layout["rows_per_s"])
    # What one diffusers forward gets: a single row with every core.
    one_row = next((layout["rows_per_s"] for layout in layouts if layout["rows"] == 1), None)
    report = {
        "kind": "throughput_ceiling",
        "model": spec.name,
        "request": {"size": size, "num_frames": defaults.num_frames, "steps": defaults.num_inference_steps,
                    "guidance_scale": defaults.guidance_scale, "dit_rows_per_video": rows_per_video},
        "machine": describe_machine(),
        "baseline": {"throughput_videos_per_s": baseline_videos_per_s, "before": baseline_before,
                     "after": baseline_after},
        "layouts": layouts,
        "best": best,
        "best_rows_per_s_over_one_row": best["rows_per_s"] / one_row if one_row else None,
        "dit_only_videos_per_s": best["rows_per_s"] / rows_per_video,
        "ceiling_served_over_diffusers": ceiling_ratio(best["rows_per_s"], rows_per_video, baseline_videos_per_s),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps({key: value for key, value in report.items() if key != "layouts"}, indent=2))
    for layout in layouts:
        typer.echo(f"{layout['layout']:<36} rows {layout['rows']:>3}  {layout['rows_per_s']:.2f} rows/s")


if __name__ == "__main__":
    typer.run(main)
