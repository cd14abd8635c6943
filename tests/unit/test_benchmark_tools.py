"""The load-test tools: workloads, arrivals, statistics, /metrics deltas, the HTTP load
generator (against a scripted stand-in server on 127.0.0.1), the diffusers baseline and
FIFO simulation, DiT FLOP counting and the plots."""

from __future__ import annotations

import io
import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from benchmarks.diffusers_baseline import fifo_summary, run_baseline, simulate_fifo
from benchmarks.dit_mfu import (
    count_forward_flops,
    dit_inputs,
    forward_figures,
    load_transformer,
    matmul_peak,
    time_forwards,
)
from benchmarks.load_generator import (
    LoadSettings,
    latency_summary,
    metrics_delta,
    percentile,
    run_load,
    series_deltas,
)
from benchmarks.report_plots import plot_load_report, plot_offered_load
from benchmarks.throughput_ceiling import ceiling_ratio, split_rows_per_s
from benchmarks.workload import (
    WorkloadMix,
    build_workload,
    open_loop_plan,
    poisson_arrivals,
    prompt_pool,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---- workload ---------------------------------------------------------------------------


def test_workload_is_deterministic_for_a_seed_and_differs_across_seeds():
    mix = WorkloadMix(i2v_fraction=0.5, sizes={"64x64": 1, "32x48": 1})
    first = build_workload(mix, 40, seed=7)
    assert first == build_workload(mix, 40, seed=7)
    assert [request.image for request in first] == [request.image for request in build_workload(mix, 40, seed=7)]
    other = build_workload(mix, 40, seed=8)
    assert [request.seed for request in first] != [request.seed for request in other]
    assert [request.prompt for request in first] != [request.prompt for request in other]


def test_workload_follows_the_mix_proportions_and_choices():
    mix = WorkloadMix(
        sizes={"128x128": 3, "64x32": 1},
        i2v_fraction=0.25,
        repeated_prompt_fraction=0.6,
        prompt_pool_size=5,
        num_frames=(9, 17),
        steps=(4, 10),
        guidance_scales=(1.0, 5.0),
        image_pool_size=2,
    )
    requests = build_workload(mix, 2000, seed=3)
    pool = prompt_pool(mix, seed=3)
    assert len(set(pool)) == 5
    sizes = Counter(request.size for request in requests)
    assert sizes["128x128"] / 2000 == pytest.approx(0.75, abs=0.04)
    i2v = [request for request in requests if request.is_image_to_video]
    assert len(i2v) / 2000 == pytest.approx(0.25, abs=0.04)
    repeated = [request for request in requests if request.prompt in pool]
    assert len(repeated) / 2000 == pytest.approx(0.6, abs=0.04)
    assert {request.prompt for request in repeated} == set(pool)  # every pooled prompt gets reused
    unique = [request.prompt for request in requests if request.prompt not in pool]
    assert len(unique) == len(set(unique))
    assert {request.num_frames for request in requests} == {9, 17}
    assert {request.num_inference_steps for request in requests} == {4, 10}
    assert {request.guidance_scale for request in requests} == {1.0, 5.0}
    # A few distinct first frames per size, reused, each a PNG of the request's size.
    assert len({request.image for request in i2v}) == 2 * 2
    for request in i2v[:20]:
        assert request.image.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(request.image)).size == (request.width, request.height)


def test_workload_mix_refuses_bad_fields_by_name(tmp_path):
    with pytest.raises(ValidationError, match="sizes"):
        WorkloadMix(sizes={"128by128": 1.0})
    with pytest.raises(ValidationError, match="sizes"):
        WorkloadMix(sizes={"128x128": 0})
    with pytest.raises(ValidationError, match="i2v_fraction"):
        WorkloadMix(i2v_fraction=1.5)
    with pytest.raises(ValidationError, match="steps"):
        WorkloadMix(steps=())
    with pytest.raises(ValidationError, match="unknown_field"):
        WorkloadMix.model_validate({"unknown_field": 1})
    mix_file = tmp_path / "mix.json"
    mix_file.write_text(json.dumps({"sizes": {"96x64": 1}, "steps": [3]}))
    loaded = WorkloadMix.load(mix_file)
    assert loaded.sizes == {"96x64": 1} and loaded.steps == (3,)
    assert WorkloadMix.load("default") == WorkloadMix()


def test_poisson_arrivals_are_deterministic_and_have_the_requested_rate():
    arrivals = poisson_arrivals(5.0, 2000.0, seed=11)
    assert arrivals == poisson_arrivals(5.0, 2000.0, seed=11)
    assert arrivals != poisson_arrivals(5.0, 2000.0, seed=12)
    assert arrivals == sorted(arrivals) and 0 < arrivals[0] and arrivals[-1] < 2000.0
    # ~10,000 arrivals: the count's standard deviation is ~1%, so 5% is a loose bound.
    assert len(arrivals) / 2000.0 == pytest.approx(5.0, rel=0.05)
    gaps = np.diff(arrivals)
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError, match="rate_per_s"):
        poisson_arrivals(0, 10, seed=0)


def test_open_loop_plan_caps_requests_and_matches_the_workload():
    arrivals, requests = open_loop_plan(WorkloadMix(), rate_per_s=10, duration_s=100, max_requests=7, seed=2)
    assert len(arrivals) == len(requests) == 7
    assert arrivals == poisson_arrivals(10, 100, seed=2)[:7]
    assert requests == build_workload(WorkloadMix(), 7, seed=2)


# ---- statistics and the FIFO simulation ------------------------------------------------


def test_percentile_on_known_data():
    values = [float(value) for value in range(1, 11)]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(reversed(values), 50) == pytest.approx(5.5)
    assert percentile([4.0], 99) == 4.0
    noisy = np.random.default_rng(0).exponential(2.0, 501).tolist()
    for q in (50, 95, 99):
        assert percentile(noisy, q) == pytest.approx(float(np.percentile(noisy, q)))
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    assert latency_summary([]) == {"p50": None, "p95": None, "p99": None, "mean": None}


def test_fifo_simulation_on_hand_made_arrivals():
    # Busy from 0 to 5, idle until the last arrival at 10.
    timings = simulate_fifo([0.0, 1.0, 1.5, 10.0], [2.0, 2.0, 1.0, 1.0])
    assert [timing.start_s for timing in timings] == [0.0, 2.0, 4.0, 10.0]
    assert [timing.finish_s for timing in timings] == [2.0, 4.0, 5.0, 11.0]
    assert [timing.queue_wait_s for timing in timings] == [0.0, 1.0, 2.5, 0.0]
    assert [timing.latency_s for timing in timings] == [2.0, 3.0, 3.5, 1.0]
    summary = fifo_summary(timings)
    assert summary["throughput_videos_per_s"] == pytest.approx(4 / 11)
    assert summary["latency_s"]["p50"] == pytest.approx(2.5)
    assert summary["queue_wait_s"]["p95"] == pytest.approx(percentile([0.0, 1.0, 2.5, 0.0], 95))
    with pytest.raises(ValueError, match="non-decreasing"):
        simulate_fifo([1.0, 0.0], [1.0, 1.0])


# ---- /metrics deltas ------------------------------------------------------------------

METRICS_BEFORE = """\
# TYPE videoserve_stage_latency_seconds histogram
videoserve_stage_latency_seconds_bucket{stage="denoiser",le="1.0"} 1
videoserve_stage_latency_seconds_bucket{stage="denoiser",le="+Inf"} 2
videoserve_stage_latency_seconds_count{stage="denoiser"} 2
videoserve_stage_latency_seconds_sum{stage="denoiser"} 3.0
videoserve_stage_latency_seconds_bucket{stage="text_encoder",le="1.0"} 2
videoserve_stage_latency_seconds_bucket{stage="text_encoder",le="+Inf"} 2
videoserve_stage_latency_seconds_count{stage="text_encoder"} 2
videoserve_stage_latency_seconds_sum{stage="text_encoder"} 0.1
# TYPE videoserve_denoise_batch_size histogram
videoserve_denoise_batch_size_bucket{le="1.0"} 10
videoserve_denoise_batch_size_bucket{le="2.0"} 10
videoserve_denoise_batch_size_bucket{le="4.0"} 10
videoserve_denoise_batch_size_bucket{le="+Inf"} 10
videoserve_denoise_batch_size_count 10
videoserve_denoise_batch_size_sum 10
# TYPE videoserve_denoise_step_seconds histogram
videoserve_denoise_step_seconds_bucket{le="0.1"} 4
videoserve_denoise_step_seconds_bucket{le="+Inf"} 10
videoserve_denoise_step_seconds_count 10
videoserve_denoise_step_seconds_sum 2.0
# TYPE videoserve_denoise_step_seconds_created gauge
videoserve_denoise_step_seconds_created 1.7e9
# TYPE videoserve_text_cache_lookups counter
videoserve_text_cache_lookups_total{result="hit"} 5
videoserve_text_cache_lookups_total{result="miss"} 5
# TYPE videoserve_frame_cache_hits counter
videoserve_frame_cache_hits_total 0
# TYPE videoserve_frame_cache_misses counter
videoserve_frame_cache_misses_total 2
# TYPE videoserve_text_cache_bytes gauge
videoserve_text_cache_bytes 1000
"""

METRICS_AFTER = """\
# TYPE videoserve_stage_latency_seconds histogram
videoserve_stage_latency_seconds_bucket{stage="denoiser",le="1.0"} 1
videoserve_stage_latency_seconds_bucket{stage="denoiser",le="+Inf"} 6
videoserve_stage_latency_seconds_count{stage="denoiser"} 6
videoserve_stage_latency_seconds_sum{stage="denoiser"} 11.0
videoserve_stage_latency_seconds_bucket{stage="text_encoder",le="1.0"} 2
videoserve_stage_latency_seconds_bucket{stage="text_encoder",le="+Inf"} 2
videoserve_stage_latency_seconds_count{stage="text_encoder"} 2
videoserve_stage_latency_seconds_sum{stage="text_encoder"} 0.1
# TYPE videoserve_denoise_batch_size histogram
videoserve_denoise_batch_size_bucket{le="1.0"} 13
videoserve_denoise_batch_size_bucket{le="2.0"} 17
videoserve_denoise_batch_size_bucket{le="4.0"} 20
videoserve_denoise_batch_size_bucket{le="+Inf"} 20
videoserve_denoise_batch_size_count 20
videoserve_denoise_batch_size_sum 31
# TYPE videoserve_denoise_step_seconds histogram
videoserve_denoise_step_seconds_bucket{le="0.1"} 4
videoserve_denoise_step_seconds_bucket{le="+Inf"} 20
videoserve_denoise_step_seconds_count 20
videoserve_denoise_step_seconds_sum 5.0
# TYPE videoserve_denoise_step_seconds_created gauge
videoserve_denoise_step_seconds_created 1.7e9
# TYPE videoserve_text_cache_lookups counter
videoserve_text_cache_lookups_total{result="hit"} 14
videoserve_text_cache_lookups_total{result="miss"} 8
# TYPE videoserve_frame_cache_hits counter
videoserve_frame_cache_hits_total 3
# TYPE videoserve_frame_cache_misses counter
videoserve_frame_cache_misses_total 3
# TYPE videoserve_text_cache_bytes gauge
videoserve_text_cache_bytes 4096
# TYPE videoserve_job_retries counter
videoserve_job_retries_total 2
# TYPE videoserve_stage_failures counter
videoserve_stage_failures_total{stage="denoiser"} 2
videoserve_stage_failures_total{stage="vae_decoder"} 0
"""


def test_metrics_delta_of_two_hand_written_expositions():
    report = metrics_delta(METRICS_BEFORE, METRICS_AFTER)
    stages = report["stage_latency"]
    assert stages["denoiser"] == {"count": 4, "sum_s": 8.0, "mean_s": 2.0}
    assert stages["text_encoder"] == {"count": 0, "sum_s": 0.0, "mean_s": None}  # nothing ran: no mean

    batch = report["denoise_batch_size"]
    assert batch["count"] == 10 and batch["mean"] == pytest.approx(2.1)
    assert [(bucket["label"], bucket["count"]) for bucket in batch["buckets"]] == [
        ("<=1", 3), ("2", 4), ("3-4", 3), (">4", 0)
    ]
    assert batch["buckets"][-1]["le"] is None  # +Inf, kept JSON-safe

    steps = report["denoise_step_seconds"]
    assert steps["count"] == 10 and steps["mean"] == pytest.approx(0.3)
    assert [bucket["count"] for bucket in steps["buckets"]] == [0, 10]

    caches = report["caches"]
    ratios = {entry["metric"]: entry for entry in caches["hit_ratios"]}
    assert ratios["videoserve_text_cache_lookups_total"]["hits"] == 9
    assert ratios["videoserve_text_cache_lookups_total"]["hit_ratio"] == pytest.approx(9 / 12)
    assert ratios["videoserve_frame_cache_{hits,misses}_total"]["hit_ratio"] == pytest.approx(3 / 4)
    gauge = [entry for entry in caches["series"] if entry["name"] == "videoserve_text_cache_bytes"]
    assert gauge == [{"name": "videoserve_text_cache_bytes", "labels": {}, "value": 4096}]
    assert not any(name.endswith("_created") for name, _ in series_deltas(METRICS_BEFORE, METRICS_AFTER))
    # Series that only appear afterwards count from zero.
    assert report["job_retries"] == 2 and report["stage_failures"] == {"denoiser": 2}


def test_metrics_delta_reads_the_servers_own_exposition():
    """The names the report looks for are the ones serve/metrics.py exports."""
    from prometheus_client import generate_latest

    from serve.metrics import VideoServeMetrics

    metrics = VideoServeMetrics(lambda: {"queued": 1})
    before = generate_latest(metrics.registry).decode()
    for seconds in (0.5, 1.5):
        metrics.stage_latency.labels("vae_decoder").observe(seconds)
    for size in (1, 2, 2, 3):
        metrics.batch_size.observe(size)
    metrics.step_seconds.observe(0.08)
    report = metrics_delta(before, generate_latest(metrics.registry).decode())
    assert report["stage_latency"]["vae_decoder"]["mean_s"] == pytest.approx(1.0)
    assert report["stage_latency"]["denoiser"]["count"] == 0
    assert report["denoise_batch_size"]["mean"] == pytest.approx(2.0)
    assert {bucket["label"]: bucket["count"] for bucket in report["denoise_batch_size"]["buckets"]}["2"] == 2
    assert report["denoise_step_seconds"]["count"] == 1
    # Whatever caches the server exports, none was used here: no hit ratio to report.
    assert all(entry["hit_ratio"] is None for entry in report["caches"]["hit_ratios"])
    assert all("cache" in entry["name"] for entry in report["caches"]["series"])


# ---- the HTTP load generator against a scripted stand-in server ------------------------


class ScriptedVideoServer:
    """Speaks the parts of videoserve's API the load generator uses, with scripted timing.

    Every job is queued for ``QUEUED_S``, in progress until ``DONE_S`` after creation,
    then completed, except the second job created, which fails. /metrics counts
    finished jobs into the denoiser's stage histogram on top of ``PRIOR_JOBS`` that
    finished before the run, so a correct delta counts only this run's jobs.
    ``/v1/videos/{id}/events`` streams the job's state as server-sent events whenever it
    changes, ending with ``done``; ``gets`` counts the plain polls and ``streams`` the
    event streams opened, so a test can tell which way a job was followed.
    """

    QUEUED_S = 0.1
    DONE_S = 0.5
    PRIOR_JOBS = 7

    def __init__(self, task: str):
        self.task = task
        self.lock = threading.Lock()
        self.jobs: dict[str, dict] = {}
        self.posts: list[dict] = []
        self.deleted: list[str] = []
        self.max_unfinished_at_create = 0
        self.gets = 0
        self.streams = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._json(200, {"object": "list", "data": [{"id": "scripted", "tasks": [server.task]}]})
                if self.path == "/metrics":
                    return self._text(server.metrics_text())
                if self.path.endswith("/events"):
                    return self._events(self.path.split("/")[-2])
                server.gets += 1
                video = server.describe(self.path.rsplit("/", 1)[-1])
                if video is None:
                    return self._json(404, {"error": {"message": "no such video"}})
                return self._json(200, video)

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                return self._json(200, server.create(self.headers["Content-Type"], body))

            def do_DELETE(self):
                server.deleted.append(self.path.rsplit("/", 1)[-1])
                return self._json(200, {"deleted": True})

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("openai-poll-after-ms", "1000")
                self.end_headers()
                self.wfile.write(data)

            def _events(self, job_id):
                server.streams += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
                last = None
                while True:
                    video = server.describe(job_id)
                    if video != last:
                        self.wfile.write(f"event: progress\ndata: {json.dumps(video)}\n\n".encode())
                        last = video
                    if video["status"] in ("completed", "failed"):
                        self.wfile.write(f"event: done\ndata: {json.dumps(video)}\n\n".encode())
                        return
                    self.wfile.flush()
                    time.sleep(0.01)

            def _text(self, text):
                data = text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def create(self, content_type: str, body: bytes) -> dict:
        with self.lock:
            now = time.monotonic()
            unfinished = sum(1 for job in self.jobs.values() if now - job["created"] < self.DONE_S)
            self.max_unfinished_at_create = max(self.max_unfinished_at_create, unfinished + 1)
            job_id = f"video_{len(self.jobs)}"
            self.jobs[job_id] = {"created": now, "fails": len(self.jobs) == 1}
            self.posts.append({"content_type": content_type, "body": body})
        return self.describe(job_id)

    def describe(self, job_id: str) -> dict | None:
        job = self.jobs.get(job_id)
        if job is None:
            return None
        age = time.monotonic() - job["created"]
        status = "queued" if age < self.QUEUED_S else "in_progress" if age < self.DONE_S else "completed"
        error = None
        if status == "completed" and job["fails"]:
            status, error = "failed", {"code": "generation_failed", "message": "scripted failure"}
        return {"id": job_id, "object": "video", "status": status, "progress": 100 if status == "completed" else 0,
                "error": error, "seed": 1}

    def metrics_text(self) -> str:
        now = time.monotonic()
        with self.lock:
            done = self.PRIOR_JOBS + sum(1 for job in self.jobs.values() if now - job["created"] >= self.DONE_S)
        return (
            "# TYPE videoserve_stage_latency_seconds histogram\n"
            f'videoserve_stage_latency_seconds_bucket{{stage="denoiser",le="+Inf"}} {done}\n'
            f'videoserve_stage_latency_seconds_count{{stage="denoiser"}} {done}\n'
            f'videoserve_stage_latency_seconds_sum{{stage="denoiser"}} {done * 0.25}\n'
        )


@pytest.fixture(scope="module", params=["events", "poll"])
def open_loop_run(request):
    settings = LoadSettings(rate_per_s=20.0, duration_s=0.3, max_requests=10, seed=4, follow=request.param,
                            max_poll_interval_s=0.05)
    mix = WorkloadMix(sizes={"32x32": 1}, steps=(2,))
    with ScriptedVideoServer(task="t2v") as server:
        report = run_load(server.url, settings, mix)
    return mix, server, report


def test_open_loop_sends_at_arrival_times_and_follows_every_job(open_loop_run):
    mix, server, report = open_loop_run
    # Each job followed the way the settings say, and only that way.
    if report["settings"]["follow"] == "events":
        assert server.streams == len(report["requests"]) and server.gets == 0
    else:
        assert server.streams == 0 and server.gets >= 2 * len(report["requests"])
    arrivals, requests = open_loop_plan(mix, 20.0, 0.3, 10, seed=4)
    assert len(arrivals) >= 3  # the seed gives a run with several overlapping requests
    records = report["requests"]
    assert [record["scheduled_s"] for record in records] == arrivals
    # Open loop: each request went out at its own offset, not after the previous one ended.
    first_finish = min(record["finished_s"] for record in records)
    assert all(record["submit_s"] >= record["scheduled_s"] for record in records)
    assert all(record["submit_s"] < first_finish for record in records)
    # T2V goes as JSON with the workload's fields.
    sent = [json.loads(post["body"]) for post in server.posts]
    assert all(post["content_type"] == "application/json" for post in server.posts)
    assert sorted(body["seed"] for body in sent) == sorted(request.seed for request in requests)
    assert {body["size"] for body in sent} == {"32x32"} and {body["num_inference_steps"] for body in sent} == {2}

    summary = report["summary"]
    assert summary["submitted"] == len(arrivals)
    assert summary["completed"] == len(arrivals) - 1
    assert summary["failures"] == 1 and summary["failures_by_reason"] == {"failed": 1}
    failed = [record for record in records if record["status"] == "failed"]
    assert failed[0]["error"] == "scripted failure" and failed[0]["latency_s"] is None
    for record in records:
        assert record["submit_s"] <= record["accepted_s"] <= record["first_in_progress_s"] <= record["finished_s"]
        assert record["server"]["status"] == record["status"]
    completed = [record for record in records if record["status"] == "completed"]
    latencies = [record["finished_s"] - record["submit_s"] for record in completed]
    assert summary["latency_s"]["p50"] == pytest.approx(percentile(latencies, 50))
    window = max(record["finished_s"] for record in completed) - min(record["submit_s"] for record in records)
    assert summary["throughput_videos_per_s"] == pytest.approx(len(completed) / window)
    waits = [record["queue_wait_s"] for record in completed]
    assert summary["queue_wait_s"]["p95"] == pytest.approx(percentile(waits, 95))
    # Only this run's jobs, not the ones the server had finished before it.
    assert report["server_metrics"]["stage_latency"]["denoiser"]["count"] == len(arrivals)
    assert report["server_metrics"]["stage_latency"]["denoiser"]["mean_s"] == pytest.approx(0.25)
    json.dumps(report, allow_nan=False)  # plain JSON: no Infinity/NaN for other tools to choke on


def test_saturation_mode_keeps_concurrency_clients_busy_with_multipart_i2v():
    settings = LoadSettings(mode="closed_loop", concurrency=2, duration_s=30, max_requests=4, seed=1,
                            max_poll_interval_s=0.05)
    mix = WorkloadMix(sizes={"32x32": 1}, i2v_fraction=1.0, image_pool_size=1)
    with ScriptedVideoServer(task="i2v") as server:
        report = run_load(server.url, settings, mix)
    assert report["summary"]["submitted"] == 4
    assert server.max_unfinished_at_create == 2  # two clients, each waiting for its job to end
    for post in server.posts:
        assert post["content_type"].startswith("multipart/form-data")
        assert b'name="input_reference"' in post["body"] and PNG_SIGNATURE in post["body"]
        assert b'name="prompt"' in post["body"]


def test_a_job_past_its_timeout_is_recorded_and_cancelled():
    settings = LoadSettings(mode="closed_loop", concurrency=1, duration_s=30, max_requests=1,
                            request_timeout_s=ScriptedVideoServer.QUEUED_S, max_poll_interval_s=0.02)
    with ScriptedVideoServer(task="t2v") as server:
        report = run_load(server.url, settings, WorkloadMix())
    (record,) = report["requests"]
    assert record["status"] == "timeout" and record["finished_s"] is None and "cancelled" in record["error"]
    assert server.deleted == [record["video_id"]]
    assert report["summary"]["failures_by_reason"] == {"timeout": 1}
    assert report["summary"]["throughput_videos_per_s"] is None


def test_load_generator_refuses_a_mix_the_served_model_cannot_run():
    settings = LoadSettings(rate_per_s=1.0, duration_s=1.0, max_requests=1)
    with ScriptedVideoServer(task="t2v") as server:
        with pytest.raises(ValueError, match="i2v_fraction"):
            run_load(server.url, settings, WorkloadMix(i2v_fraction=0.5))
        assert server.posts == []
    with pytest.raises(ValidationError, match="rate_per_s"):
        LoadSettings(duration_s=1.0, max_requests=1)
    with pytest.raises(ValidationError, match="concurrency"):
        LoadSettings(mode="closed_loop", duration_s=1.0, max_requests=1)


# ---- plots ------------------------------------------------------------------------------


def test_plots_write_png_files(open_loop_run, tmp_path):
    _, _, report = open_loop_run
    report = {**report, "server_metrics": metrics_delta(METRICS_BEFORE, METRICS_AFTER)}
    paths = plot_load_report(report, tmp_path, "run")
    assert sorted(path.name for path in paths) == ["run_batch_sizes.png", "run_latency_cdf.png",
                                                   "run_latency_over_time.png"]
    faster = {**report, "settings": {**report["settings"], "rate_per_s": 40.0}}
    paths.append(plot_offered_load([report, faster], tmp_path / "sweep.png"))
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    closed = {**report, "settings": {**report["settings"], "mode": "closed_loop"}}
    with pytest.raises(ValueError, match="open-loop"):
        plot_offered_load([closed], tmp_path / "none.png")


# ---- DiT FLOPs and MFU ------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_flop_count_of_a_linear_layer_is_2mnk(bias):
    m, k, n = 8, 32, 16
    layer = torch.nn.Linear(k, n, bias=bias)
    assert count_forward_flops(layer, torch.randn(m, k)) == 2 * m * n * k


def test_flop_count_includes_cpu_attention():
    from torch.utils.flop_counter import sdpa_flop_count

    class Attention(torch.nn.Module):
        def forward(self, query, key, value):
            return torch.nn.functional.scaled_dot_product_attention(query, key, value)

    query = torch.randn(2, 4, 40, 16)
    flops = count_forward_flops(Attention(), query, query, query)
    assert flops == sdpa_flop_count(query.shape, query.shape, query.shape) == 2 * (2 * 2 * 4 * 40 * 40 * 16)


def test_dit_figures_on_the_tiny_preset(tiny_spec):
    transformer = load_transformer(tiny_spec)
    peak = matmul_peak(size=64, repeats=1)
    assert peak.flops == 2 * 64**3
    timings = time_forwards(transformer, lambda rows: dit_inputs(tiny_spec, transformer, rows), [1, 2], 1)
    figures = forward_figures(timings, peak)
    one, two = figures
    assert one.flops_per_forward > 0 and two.flops_per_forward == 2 * one.flops_per_forward
    for figure in figures:
        achieved = figure.flops_per_forward / figure.seconds
        assert figure.achieved_gflops_per_s == pytest.approx(achieved / 1e9)
        assert figure.mfu == pytest.approx(achieved / peak.flops_per_s)
    assert one.throughput_gain_vs_batch1 == pytest.approx(1.0)
    assert two.throughput_gain_vs_batch1 == pytest.approx((2 / two.seconds) * one.seconds)


def test_dit_inputs_for_image_to_video_carry_the_image_encoders_tokens(tiny_i2v_spec, tiny_i2v_pipeline):
    from tests.support.images import image_bytes
    from engine.request_validation import validate_generation

    transformer = load_transformer(tiny_i2v_spec)
    inputs = dit_inputs(tiny_i2v_spec, transformer, rows=2)
    request = validate_generation({"prompt": "x", "image": image_bytes(64, 48), "seed": 1}, tiny_i2v_spec)
    embeds = tiny_i2v_pipeline.image_conditioner.condition(request).image_embeds
    assert inputs["encoder_hidden_states_image"].shape == (2, *embeds.shape[1:])


def test_ceiling_ratio_is_the_dit_only_video_rate_over_the_baseline():
    # 40 rows/s, 20 rows per video: 2 videos/s against diffusers' 1.6.
    assert ceiling_ratio(40.0, 20, 1.6) == pytest.approx(1.25)
    with pytest.raises(ValueError, match="positive"):
        ceiling_ratio(40.0, 0, 1.6)


def test_split_processes_each_time_forwards_while_the_others_run(tiny_spec, preset_cache):
    rows_per_s = split_rows_per_s("tiny", preset_cache, processes=2, threads=1, rows=2, repeats=2)
    # Two real processes each reported a rate: the sum is a finite, positive rows/s.
    assert 0 < rows_per_s < float("inf")


# ---- diffusers baseline -----------------------------------------------------------------


def test_diffusers_baseline_runs_the_workload_and_simulates_fifo(tiny_spec, preset_cache):
    mix = WorkloadMix(sizes={"32x32": 1}, num_frames=(5,), steps=(2,))
    requests = build_workload(mix, 2, seed=0)
    report = run_baseline("tiny", requests, preset_cache, arrivals=[0.0, 0.0], warmup=False)
    service = [record["service_s"] for record in report["requests"]]
    assert report["summary"]["completed"] == 2 and all(seconds > 0 for seconds in service)
    assert report["summary"]["throughput_videos_per_s"] == pytest.approx(2 / report["summary"]["elapsed_s"])
    # Both arrive at once: the second waits for the whole of the first.
    timings = report["open_loop"]["timings"]
    assert timings[1]["start_s"] == pytest.approx(service[0])
    assert timings[1]["finish_s"] == pytest.approx(service[0] + service[1])
    with pytest.raises(ValueError, match="i2v_fraction"):
        run_baseline("tiny", build_workload(WorkloadMix(i2v_fraction=1.0, sizes={"32x32": 1}), 1, seed=0),
                     preset_cache)


def test_model_memory_counts_the_published_architectures_and_their_gang_shares():
    from benchmarks.model_memory import model_memory

    report = model_memory(ranks=4)
    wan14b = report["wan2.1-t2v-14b"]["components"]["transformer"]
    a14b = report["wan2.2-t2v-a14b"]["components"]["transformer"]
    assert 14.0e9 < wan14b["parameters"] < 14.6e9  # "14B"
    assert a14b["parameters"] == 2 * wan14b["parameters"] and a14b["copies"] == 2
    assert 4.5e9 < report["wan2.2-ti2v-5b"]["components"]["transformer"]["parameters"] < 5.5e9  # "5B"
    # Tensor parallel keeps a quarter of the split linears and all of the rest: a little over 1/4.
    share = a14b["tensor_parallel_gib_per_rank"] / a14b["gib"]
    assert 0.25 < share < 0.27
    assert a14b["ulysses_gib_per_rank"] == a14b["gib"]
    assert "tensor_parallel_gib_per_rank" not in report["ltx-video"]["components"]["transformer"]
    # Every Wan model shares the one UMT5-XXL encoder: the same bytes everywhere.
    encoders = {entry["components"]["text_encoder"]["gib"] for name, entry in report.items() if name.startswith("wan")}
    assert len(encoders) == 1


def test_batched_parts_times_both_shortcuts_and_refuses_a_model_without_per_token_timesteps(preset_specs, preset_cache,
                                                                                               tmp_path):
    import typer

    from benchmarks.batched_parts import main as batched_parts

    preset_specs["tiny-wan22-ti2v"]  # built into the cache
    output = tmp_path / "parts.json"
    batched_parts(model="tiny-wan22-ti2v", repeats=1, output=output, cache_dir=preset_cache)
    report = json.loads(output.read_text())
    assert [row["requests"] for row in report["dit_forward"]] == [1, 4, 8]
    assert [row["videos"] for row in report["vae_decode"]] == [2, 4, 8]
    assert all(row["per_token_s"] > 0 and row["distinct_s"] > 0 for row in report["dit_forward"])
    assert all(row["together_s_per_video"] > 0 for row in report["vae_decode"])
    preset_specs["tiny"]
    with pytest.raises(typer.BadParameter, match="TI2V"):
        batched_parts(model="tiny", repeats=1, output=output, cache_dir=preset_cache)
