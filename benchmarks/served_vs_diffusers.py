"""The served cluster against sequential diffusers, side by side in one run on one machine.

For each served configuration (``--served``: the default layout, each layout explicitly,
and the default layout with the default step cache): saturation throughput over HTTP and
single-request latency, each divided by the sequential, uncached diffusers baseline
running the same requests. With ``--p95`` the default configuration also gets issue 4's
p95 latency at 70% of its saturation load and a warm-text-cache run.

    python -m benchmarks.served_vs_diffusers [--model toy] [--repeats 3] [--served default --served ...]

The diffusers baseline runs before the first cluster starts and again after the last one
stops, so the two never share the cores and a drift in the machine's speed during the run
shows (and is averaged) instead of biasing the ratios. Every figure is a median over
``--repeats`` runs (the baseline's over twice that). The request mix is the model's own
default request (size, frames, steps, guidance), with prompts of its grammar where it has one.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from benchmarks.diffusers_baseline import run_baseline
from benchmarks.load_generator import LoadSettings, client_machine, run_load
from benchmarks.process_cpu import measured_cpu
from benchmarks.workload import WorkloadMix, build_workload

DEFAULT_CACHE_DIR = Path.home() / ".cache" / "videoserve"
# name -> (AppConfig fields over the common ones, request step_cache or None for the server's default)
SERVED_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "colocated": {"layout": "colocated"},
    "colocated+engine_thread": {"layout": "colocated", "vae_decoder": {"colocated_thread": "engine"}},
    "disaggregated": {"layout": "disaggregated"},
    "default+step_cache": {"denoiser": {"step_cache": True}},
    "default+taylorseer": {"denoiser": {"step_cache": {"policy": "taylorseer"}}},
}


def served_config(name: str) -> dict[str, Any]:
    """A named configuration, or ``default+<policy>@<threshold>`` for any step-cache setting."""
    if name in SERVED_CONFIGS:
        return SERVED_CONFIGS[name]
    if name.startswith("default+") and "@" in name:
        policy, threshold = name.removeprefix("default+").split("@", 1)
        return {"denoiser": {"step_cache": {"policy": policy, "threshold": float(threshold)}}}
    raise typer.BadParameter(f"unknown {name!r}; choose from {', '.join(SERVED_CONFIGS)} or default+<policy>@<threshold>",
                             param_hint="--served")


def _median(values: list[float]) -> float:
    return statistics.median(values)


def model_mix(model: str, cache_dir: Path) -> WorkloadMix:
    """The model's default request, with unique prompts (about the DiT's throughput, not cache hits)."""
    from engine.models.model_registry import resolve_model

    spec = resolve_model(model, cache_dir)
    defaults = spec.defaults
    return WorkloadMix(sizes={f"{defaults.width}x{defaults.height}": 1.0}, repeated_prompt_fraction=0.0,
                       num_frames=(defaults.num_frames,), steps=(defaults.num_inference_steps,),
                       guidance_scales=(defaults.guidance_scale,),
                       prompt_language="toy_world" if spec.prompt_grammar == "toy_world" else "scenes")


def main(
    model: Annotated[str, typer.Option()] = "toy",
    served: Annotated[list[str] | None, typer.Option(
        help=f"Served configurations to measure, in order (default all): {', '.join(SERVED_CONFIGS)}, or "
             "default+<policy>@<threshold>.")] = None,
    repeats: Annotated[int, typer.Option(help="Runs per figure; medians are reported.")] = 3,
    saturation_requests: Annotated[int, typer.Option()] = 16,
    concurrency: Annotated[int, typer.Option(help="Closed-loop clients for the saturation run.")] = 8,
    p95: Annotated[bool, typer.Option(help="Also p95 latency at 70% load and a warm-cache run (default config).")]
    = False,
    open_loop_seconds: Annotated[float, typer.Option()] = 60.0,
    max_batch_size: Annotated[int, typer.Option()] = 8,
    torch_threads: Annotated[int | None, typer.Option(
        help="Threads of every model stage (AppConfig.torch_threads); unset: the DiT's replica 2, the others 1.")]
    = None,
    compile_models: Annotated[bool, typer.Option("--compile/--no-compile",
                                              help="The served DiT and VAE decoder run torch.compile'd (denoiser.compile, "
                                                   "vae_decoder.compile).")] = False,
    port: Annotated[int, typer.Option()] = 8311,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/out/served_vs_diffusers.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    configs = {name: served_config(name) for name in served or SERVED_CONFIGS}
    mix = model_mix(model, cache_dir)
    report: dict[str, Any] = {"model": model, "mix": mix.model_dump(mode="json"), "machine": client_machine(),
                              "torch_threads": torch_threads, "compile": compile_models, "served": {}}

    def baseline(first_seed: int) -> list[dict]:
        return [run_baseline(model, build_workload(mix, 6, seed=first_seed + run), cache_dir)["summary"]
                for run in range(repeats)]

    typer.echo("diffusers baseline (sequential, in-process, uncached), before the clusters...")
    baseline_before = baseline(100)
    url = f"http://127.0.0.1:{port}"
    for name in configs:
        typer.echo(f"[{name}] starting the cluster...")
        with tempfile.TemporaryDirectory(prefix="videoserve-bench-") as state_dir:
            layout = _start_cluster(model, cache_dir, Path(state_dir), port, max_batch_size, torch_threads,
                                    compile_models, configs[name])
            try:
                report["served"][name] = {"layout": layout, **_measure(url, mix, repeats, saturation_requests,
                                                                       concurrency, p95 and name == "default",
                                                                       open_loop_seconds)}
            finally:
                _stop_cluster()
    typer.echo("diffusers baseline again, after the clusters...")
    baseline_after = baseline(150)
    baseline_runs = baseline_before + baseline_after
    baseline_throughput = _median([run["throughput_videos_per_s"] for run in baseline_runs])
    baseline_latency = _median([run["request_latency_s"]["p50"] for run in baseline_runs])
    report["baseline"] = {
        "throughput_videos_per_s": baseline_throughput, "latency_s": baseline_latency,
        "throughput_before_after": [_median([run["throughput_videos_per_s"] for run in runs])
                                    for runs in (baseline_before, baseline_after)],
        "runs": baseline_runs,
    }
    report["ratios"] = {
        name: {"saturation_throughput_over_baseline": figures["saturation_throughput_videos_per_s"]
               / baseline_throughput,
               "single_latency_over_diffusers_call": figures["single_request_latency_s"] / baseline_latency,
               **({"p95_at_70pct_over_unloaded": figures["p95_latency_at_70pct_s"] / figures["single_request_latency_s"]}
                  if "p95_latency_at_70pct_s" in figures else {})}
        for name, figures in report["served"].items()
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps({
        "baseline": {k: v for k, v in report["baseline"].items() if k != "runs"},
        "served": {name: {k: v for k, v in figures.items() if not k.endswith(("runs", "run"))}
                   for name, figures in report["served"].items()},
        "ratios": report["ratios"]}, indent=2))


def _measure(url: str, mix: WorkloadMix, repeats: int, saturation_requests: int, concurrency: int, with_p95: bool,
             open_loop_seconds: float) -> dict[str, Any]:
    typer.echo("  single requests over HTTP...")
    single_runs = [run_load(url, LoadSettings(mode="closed_loop", concurrency=1, duration_s=600,
                                              max_requests=4, seed=200 + run), mix) for run in range(repeats)]
    unloaded = _median([run["summary"]["latency_s"]["p50"] for run in single_runs])
    typer.echo("  saturation (closed loop)...")
    saturation_runs = []
    for run in range(repeats):
        with measured_cpu() as cpu:  # which processes had the cores while the cluster was saturated
            result = run_load(url, LoadSettings(mode="closed_loop", concurrency=concurrency, duration_s=600,
                                                max_requests=saturation_requests, seed=300 + run), mix)
        saturation_runs.append({**result, "cpu": cpu})
    saturation = _median([run["summary"]["throughput_videos_per_s"] for run in saturation_runs])
    figures: dict[str, Any] = {
        "single_request_latency_s": unloaded,
        "saturation_throughput_videos_per_s": saturation,
        "single_runs": [run["summary"] for run in single_runs],
        "saturation_runs": [{**run["summary"], "server_metrics": run["server_metrics"], "cpu": run["cpu"]}
                            for run in saturation_runs],
        "saturation_cpu_share": _cpu_share([run["cpu"] for run in saturation_runs]),
    }
    if with_p95:
        typer.echo(f"  open loop at 70% of {saturation:.3f} videos/s...")
        open_runs = [run_load(url, LoadSettings(mode="open_loop", rate_per_s=0.7 * saturation,
                                                duration_s=open_loop_seconds, max_requests=200, seed=400 + run), mix)
                     for run in range(repeats)]
        figures["p95_latency_at_70pct_s"] = _median([run["summary"]["latency_s"]["p95"] for run in open_runs])
        figures["open_loop_runs"] = [{**run["summary"], "server_metrics": run["server_metrics"]} for run in open_runs]
        typer.echo("  warm text cache (one repeated prompt)...")
        cached_mix = mix.model_copy(update={"repeated_prompt_fraction": 1.0, "prompt_pool_size": 1})
        cache_run = run_load(url, LoadSettings(mode="closed_loop", concurrency=1, duration_s=600, max_requests=6,
                                               seed=500), cached_mix)
        figures["warm_cache_run"] = {**cache_run["summary"], "server_metrics": cache_run["server_metrics"]}
    return figures


def _cpu_share(runs: list[dict], top: int = 8) -> dict[str, float]:
    """Median share of the machine's CPU capacity (wall × cores) per process label; 'idle' is what none used."""
    labels = sorted({label for run in runs for label in run["cpu_s_by_process"]})
    shares = {label: _median([run["cpu_s_by_process"].get(label, 0.0) / (run["wall_s"] * run["cores"])
                              for run in runs]) for label in labels}
    biggest = dict(sorted(shares.items(), key=lambda item: -item[1])[:top])
    biggest["everything else"] = _median([
        sum(seconds for label, seconds in run["cpu_s_by_process"].items() if label not in biggest)
        / (run["wall_s"] * run["cores"]) for run in runs])
    biggest["idle"] = _median([max(0.0, 1 - run["cpu_s_total"] / (run["wall_s"] * run["cores"])) for run in runs])
    return biggest


def _start_cluster(model: str, cache_dir: Path, state_dir: Path, port: int, max_batch_size: int,
                   torch_threads: int | None, compile_models: bool, overrides: dict[str, Any]) -> str:
    """Ray and the app, one replica per deployment; returns the layout it runs."""
    import ray

    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config, deploy
    from serve.deployment_defaults import merge_options
    from serve.layout import resolved_layout

    config = AppConfig.model_validate(merge_options({
        "models": [model], "cache_dir": str(cache_dir), "device": "cpu",
        "storage": {"state_dir": str(state_dir)},
        "denoiser": {"max_batch_size": max_batch_size, "compile": compile_models},
        "vae_decoder": {"compile": compile_models},
        "torch_threads": torch_threads,
    }, overrides))
    serve_config = default_serve_config(config, port=port)
    for deployment in serve_config["applications"][0]["deployments"]:
        # One replica per stage on a 2-core machine: a second DiT replica would only
        # split the same two cores.
        deployment["autoscaling_config"] = None
        deployment["num_replicas"] = 1
        if deployment["name"] in ("Denoiser", "Pipeline"):
            # The DiT's replica gets both cores (two torch threads, as the baseline has); the
            # other stages one thread each.
            deployment["ray_actor_options"] = {"num_cpus": 2}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="serve")
    deploy(serve_config)
    time.sleep(2)
    return resolved_layout(config)[0]


def _stop_cluster() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    typer.run(main)
