"""Sequential single requests against the served `bench` app, with where each one's time went.

Starts the same one-replica-per-stage cluster as ``served_vs_diffusers``, sends
``--requests`` requests one after another (the first is a warm-up and not counted), and
reports their latencies and, from the server's own metrics, each stage's mean time per
job. Run it on two checkouts one after the other to compare a change's cost per stage:

    python -m benchmarks.single_request_stages [--requests 7]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from benchmarks.machine import describe_machine
from benchmarks.served_vs_diffusers import DEFAULT_CACHE_DIR, _start_cluster, _stop_cluster

_SERIES = ("videoserve_stage_latency_seconds", "videoserve_denoise_step_seconds")


def _stage_sums(url: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    sums = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            for series in _SERIES:
                if sample.name in (f"{series}_sum", f"{series}_count"):
                    sums[(sample.name, sample.labels.get("stage", "step"))] = sample.value
    return sums


def _run_job(url: str, index: int) -> float:
    started = time.perf_counter()
    video = httpx.post(f"{url}/v1/videos", json={"prompt": f"a red car drives at night {index}", "size": "128x128",
                                                  "num_frames": 17, "num_inference_steps": 10,
                                                  "guidance_scale": 5.0, "seed": index}).json()
    while httpx.get(f"{url}/v1/videos/{video['id']}").json()["status"] not in ("completed", "failed"):
        time.sleep(0.02)
    return time.perf_counter() - started


def main(
    requests: Annotated[int, typer.Option(help="Requests, one after another; the first is a warm-up.")] = 7,
    port: Annotated[int, typer.Option()] = 8411,
    cache_dir: Annotated[Path, typer.Option(envvar="VIDEOSERVE_CACHE_DIR")] = DEFAULT_CACHE_DIR,
    output: Annotated[Path, typer.Option(help="JSON report.")] = Path("benchmarks/out/single_request_stages.json"),
) -> None:
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="videoserve-bench-") as state_dir:
        _start_cluster("bench", cache_dir, Path(state_dir), port, 8, None)
        try:
            latencies = [_run_job(url, 0)]
            before = _stage_sums(url)
            latencies += [_run_job(url, index) for index in range(1, requests)]
            after = _stage_sums(url)
        finally:
            _stop_cluster()
    per_job = {}
    for (name, stage), total in after.items():
        if name.endswith("_sum"):
            count = after.get((name.replace("_sum", "_count"), stage), 0) - before.get(
                (name.replace("_sum", "_count"), stage), 0)
            if count:
                per_job[stage] = (total - before.get((name, stage), 0)) / count
    report = {"machine": describe_machine(), "latencies_s": latencies,
              "median_latency_s": statistics.median(latencies[1:]), "stage_mean_s": per_job}
    typer.echo(json.dumps({key: report[key] for key in ("median_latency_s", "stage_mean_s")}, indent=2))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    typer.run(main)
