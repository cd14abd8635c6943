"""Issue 4's figures, side by side in one run on one machine:

- saturation throughput of the served cluster / the sequential diffusers baseline;
- single-request latency over HTTP / one in-process diffusers call;
- p95 latency at 70% of saturation load / unloaded latency;
- text-encoder time and cache hit ratio with a warm cache.

    python -m benchmarks.served_vs_diffusers [--model bench] [--repeats 3]

The diffusers baseline runs before the cluster starts and again after it stops, so the
two never share the cores and a drift in the machine's speed during the run shows (and
is averaged) instead of biasing the ratios. Every figure is a median over ``--repeats``
runs (the baseline's over twice that).
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


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main(
    model: Annotated[str, typer.Option()] = "bench",
    repeats: Annotated[int, typer.Option(help="Runs per figure; medians are reported.")] = 3,
    saturation_requests: Annotated[int, typer.Option()] = 16,
    concurrency: Annotated[int, typer.Option(help="Closed-loop clients for the saturation run.")] = 8,
    open_loop_seconds: Annotated[float, typer.Option()] = 60.0,
    max_batch_size: Annotated[int, typer.Option()] = 8,
    torch_threads: Annotated[int | None, typer.Option(
        help="Threads of every model stage (AppConfig.torch_threads); unset: the Denoiser 2, the others 1.")] = None,
    compile_models: Annotated[bool, typer.Option("--compile/--no-compile",
                                              help="The served DiT and VAE decoder run torch.compile'd (denoiser.compile, "
                                                   "vae_decoder.compile).")] = False,
    port: Annotated[int, typer.Option()] = 8311,
    output: Annotated[Path, typer.Option()] = Path("benchmarks/out/served_vs_diffusers.json"),
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
) -> None:
    # One fixed request shape (the preset's defaults), unique prompts unless said otherwise:
    # the comparison is about the DiT's throughput, not about cache hits.
    mix = WorkloadMix(sizes={"128x128": 1.0}, repeated_prompt_fraction=0.0, num_frames=(17,), steps=(10,),
                      guidance_scales=(5.0,))
    report: dict[str, Any] = {"model": model, "mix": mix.model_dump(mode="json"), "machine": client_machine(),
                              "torch_threads": torch_threads, "compile": compile_models}

    def baseline(first_seed: int) -> list[dict]:
        return [run_baseline(model, build_workload(mix, 6, seed=first_seed + run), cache_dir)["summary"]
                for run in range(repeats)]

    # The baseline runs both before the cluster starts and after it stops (never beside
    # it): a shared VM's speed drifts over minutes, and the ratios should not carry that drift.
    typer.echo("diffusers baseline (sequential, in-process), before the cluster...")
    baseline_before = baseline(100)

    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="videoserve-bench-") as state_dir:
        _start_cluster(model, cache_dir, Path(state_dir), port, max_batch_size, torch_threads, compile_models)
        try:
            typer.echo("single requests over HTTP...")
            single_runs = [run_load(url, LoadSettings(mode="closed_loop", concurrency=1, duration_s=600,
                                                      max_requests=4, seed=200 + run), mix) for run in range(repeats)]
            unloaded = _median([run["summary"]["latency_s"]["p50"] for run in single_runs])
            typer.echo("saturation (closed loop)...")
            saturation_runs = []
            for run in range(repeats):
                # Which processes had the cores while the cluster was saturated.
                with measured_cpu() as cpu:
                    result = run_load(url, LoadSettings(mode="closed_loop", concurrency=concurrency, duration_s=600,
                                                        max_requests=saturation_requests, seed=300 + run), mix)
                saturation_runs.append({**result, "cpu": cpu})
            saturation = _median([run["summary"]["throughput_videos_per_s"] for run in saturation_runs])
            typer.echo(f"open loop at 70% of {saturation:.3f} videos/s...")
            open_runs = [
                run_load(url, LoadSettings(mode="open_loop", rate_per_s=0.7 * saturation,
                                           duration_s=open_loop_seconds, max_requests=200, seed=400 + run), mix)
                for run in range(repeats)
            ]
            p95_at_70 = _median([run["summary"]["latency_s"]["p95"] for run in open_runs])
            typer.echo("warm text cache (one repeated prompt)...")
            cached_mix = mix.model_copy(update={"repeated_prompt_fraction": 1.0, "prompt_pool_size": 1})
            cache_run = run_load(url, LoadSettings(mode="closed_loop", concurrency=1, duration_s=600,
                                                   max_requests=6, seed=500), cached_mix)
        finally:
            _stop_cluster()
    typer.echo("diffusers baseline again, after the cluster...")
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

    report["served"] = {
        "single_request_latency_s": unloaded,
        "saturation_throughput_videos_per_s": saturation,
        "p95_latency_at_70pct_s": p95_at_70,
        "single_runs": [run["summary"] for run in single_runs],
        "saturation_runs": [{**run["summary"], "server_metrics": run["server_metrics"], "cpu": run["cpu"]}
                            for run in saturation_runs],
        "saturation_cpu_share": _cpu_share([run["cpu"] for run in saturation_runs]),
        "open_loop_runs": [{**run["summary"], "server_metrics": run["server_metrics"]} for run in open_runs],
        "warm_cache_run": {**cache_run["summary"], "server_metrics": cache_run["server_metrics"]},
    }
    report["ratios"] = {
        "saturation_throughput_over_baseline": saturation / baseline_throughput,
        "single_latency_over_diffusers_call": unloaded / baseline_latency,
        "p95_at_70pct_over_unloaded": p95_at_70 / unloaded,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps({"baseline": {k: v for k, v in report["baseline"].items() if k != "runs"},
                           "served": {k: v for k, v in report["served"].items() if not k.endswith(("runs", "run"))},
                           "ratios": report["ratios"],
                           "saturation_cpu_share": report["served"]["saturation_cpu_share"],
                           "warm_cache": cache_run["server_metrics"].get("caches"),
                           "warm_cache_stages": cache_run["server_metrics"].get("stage_latency")}, indent=2))


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
                   torch_threads: int | None, compile_models: bool = False) -> None:
    import ray

    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config, deploy

    config = AppConfig.model_validate({
        "models": [model], "cache_dir": str(cache_dir), "device": "cpu",
        "storage": {"state_dir": str(state_dir)},
        "denoiser": {"max_batch_size": max_batch_size, "compile": compile_models},
        "vae_decoder": {"compile": compile_models},
        "torch_threads": torch_threads,
    })
    serve_config = default_serve_config(config, port=port)
    for deployment in serve_config["applications"][0]["deployments"]:
        # One replica per stage on a 2-core machine: a second DiT replica would only
        # split the same two cores.
        deployment["autoscaling_config"] = None
        deployment["num_replicas"] = 1
        if deployment["name"] == "Denoiser":
            # The DiT gets both cores (two torch threads, as the baseline has); the other
            # stages one thread each.
            deployment["ray_actor_options"] = {"num_cpus": 2}
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="serve")
    deploy(serve_config)
    time.sleep(2)


def _stop_cluster() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    typer.run(main)
