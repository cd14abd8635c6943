"""Prometheus metrics: every name the code exports is declared, and documented, here.

The ingress replica owns them: stage latencies, step times and batch sizes are measured
where the orchestrator sees each stage's result, and job counts are read from the job
store when Prometheus scrapes, so they are right across replicas and restarts. Replica
counts per stage are Ray Serve's own, also read at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

STAGES = ("prompt_expander", "text_encoder", "image_conditioner", "denoiser", "vae_decoder", "post_processor")
# The Serve deployment that runs each stage (the names serve/app_builder.py binds).
STAGE_DEPLOYMENTS = {
    "prompt_expander": "PromptExpander",
    "text_encoder": "TextEncoder",
    "image_conditioner": "ImageConditioner",
    "denoiser": "Denoiser",
    "vae_decoder": "VaeDecoder",
    "post_processor": "PostProcessor",
}
JOB_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled")

# name -> (type, help). The Grafana dashboard and docs use exactly these names.
METRICS: dict[str, tuple[str, str]] = {
    "videoserve_http_requests_total": ("counter", "HTTP requests by method, route and status code."),
    "videoserve_stage_latency_seconds": ("histogram", "Time from calling a stage to its result, by stage."),
    "videoserve_stage_in_flight": ("gauge", "Calls in flight to each stage from this ingress."),
    "videoserve_stage_replicas": ("gauge", "Running replicas of each stage's deployment, as Ray Serve reports them."),
    "videoserve_stage_failures_total": ("counter", "Stage calls that raised, by stage."),
    "videoserve_denoise_step_seconds": ("histogram", "Wall time of one denoising step."),
    "videoserve_denoise_steps_total": ("counter", "Denoising steps run."),
    "videoserve_denoise_batch_size": ("histogram", "Requests in each denoising step."),
    "videoserve_denoise_communication_bytes_total": (
        "counter", "Bytes rank 0 of a multi-rank Denoiser handed to collectives, by kind (all_reduce, all_to_all, "
        "all_gather); each step's volume is shared out over the requests in it."),
    "videoserve_jobs": ("gauge", "Jobs in the job store by status."),
    "videoserve_queue_depth": ("gauge", "Jobs accepted and waiting for a worker."),
    "videoserve_jobs_running": ("gauge", "Jobs this ingress replica is running now."),
    "videoserve_jobs_finished_total": ("counter", "Jobs that ended, by final status."),
    "videoserve_job_retries_total": ("counter", "Job runs that failed and were queued again."),
    "videoserve_job_duration_seconds": ("histogram", "Time from job creation to completion."),
    "videoserve_video_flicker": ("histogram", "Flicker of each finished video: mean absolute frame-to-frame "
                                 "error after optical-flow motion compensation, in 0-255 levels, by model."),
    "videoserve_webhook_deliveries_total": ("counter", "Webhook delivery attempts by event type and outcome."),
    "videoserve_cache_hits_total": ("counter", "Conditioning-cache hits, by cache (text_embeddings, first_frames)."),
    "videoserve_cache_misses_total": ("counter", "Conditioning-cache misses, by cache."),
    "videoserve_cache_evictions_total": ("counter", "Entries evicted to stay within the byte bound, by cache."),
    "videoserve_cache_bytes": ("gauge", "Bytes held by each conditioning cache."),
    "videoserve_cache_entries": ("gauge", "Entries held by each conditioning cache."),
}
CACHES = ("text_embeddings", "first_frames")
COLLECTIVE_KINDS = ("all_reduce", "all_to_all", "all_gather")  # what engine/parallel logs

# Flicker in 0-255 levels: a clean toy-world render scores well under 1, per-frame noise of
# a few levels scores its size, and a strobing video tens.
_FLICKER_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class VideoServeMetrics:
    def __init__(self, job_counts: Callable[[], dict[str, int]], registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        # The caches live in their own actors; /metrics refreshes this snapshot of their counters.
        self.cache_snapshot: dict[str, dict[str, int]] = {}
        r = self.registry
        self.http_requests = Counter("videoserve_http_requests", _help("videoserve_http_requests_total"),
                                     ["method", "route", "status"], registry=r)
        self.stage_latency = Histogram("videoserve_stage_latency_seconds", _help("videoserve_stage_latency_seconds"),
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.stage_in_flight = Gauge("videoserve_stage_in_flight", _help("videoserve_stage_in_flight"), ["stage"],
                                     registry=r)
        self.stage_replicas = Gauge("videoserve_stage_replicas", _help("videoserve_stage_replicas"), ["stage"],
                                    registry=r)
        self.stage_failures = Counter("videoserve_stage_failures", _help("videoserve_stage_failures_total"),
                                      ["stage"], registry=r)
        self.step_seconds = Histogram("videoserve_denoise_step_seconds", _help("videoserve_denoise_step_seconds"),
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.steps = Counter("videoserve_denoise_steps", _help("videoserve_denoise_steps_total"), registry=r)
        self.batch_size = Histogram("videoserve_denoise_batch_size", _help("videoserve_denoise_batch_size"),
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.communication_bytes = Counter("videoserve_denoise_communication_bytes",
                                           _help("videoserve_denoise_communication_bytes_total"), ["kind"], registry=r)
        self.jobs_running = Gauge("videoserve_jobs_running", _help("videoserve_jobs_running"), registry=r)
        self.jobs_finished = Counter("videoserve_jobs_finished", _help("videoserve_jobs_finished_total"),
                                     ["status"], registry=r)
        self.job_retries = Counter("videoserve_job_retries", _help("videoserve_job_retries_total"), registry=r)
        self.job_duration = Histogram("videoserve_job_duration_seconds", _help("videoserve_job_duration_seconds"),
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.video_flicker = Histogram("videoserve_video_flicker", _help("videoserve_video_flicker"), ["model"],
                                       buckets=_FLICKER_BUCKETS, registry=r)
        self.webhook_deliveries = Counter("videoserve_webhook_deliveries", _help("videoserve_webhook_deliveries_total"),
                                          ["event", "outcome"], registry=r)
        r.register(_JobStoreCollector(job_counts))
        r.register(_CacheCollector(lambda: self.cache_snapshot))
        # Create every labelled series up front, so dashboards see zeros instead of gaps.
        for stage in STAGES:
            self.stage_latency.labels(stage)
            self.stage_in_flight.labels(stage)
            self.stage_replicas.labels(stage)
            self.stage_failures.labels(stage)
        for status in ("completed", "failed", "cancelled"):
            self.jobs_finished.labels(status)
        for kind in COLLECTIVE_KINDS:
            self.communication_bytes.labels(kind)
        for event in ("video.completed", "video.failed"):
            for outcome in ("delivered", "retry", "failed"):
                self.webhook_deliveries.labels(event, outcome)

    def set_stage_replicas(self, running: dict[str, int]) -> None:
        """Record Serve's replica counts; a stage this application does not run reads 0."""
        for stage in STAGES:
            self.stage_replicas.labels(stage).set(running.get(stage, 0))


class _JobStoreCollector:
    """Job counts read from the store at scrape time."""

    def __init__(self, job_counts: Callable[[], dict[str, int]]):
        self._job_counts = job_counts

    def collect(self):
        counts = self._job_counts()
        jobs = GaugeMetricFamily("videoserve_jobs", _help("videoserve_jobs"), labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
        yield GaugeMetricFamily("videoserve_queue_depth", _help("videoserve_queue_depth"), value=counts.get("queued", 0))

    def describe(self):
        return []


class _CacheCollector:
    """Cache counters as the cache actors count them (cluster-wide, not per replica)."""

    _FIELDS = (
        ("videoserve_cache_hits_total", "hits"),
        ("videoserve_cache_misses_total", "misses"),
        ("videoserve_cache_evictions_total", "evictions"),
        ("videoserve_cache_bytes", "bytes"),
        ("videoserve_cache_entries", "entries"),
    )

    def __init__(self, snapshot: Callable[[], dict[str, dict[str, int]]]):
        self._snapshot = snapshot

    def collect(self):
        snapshot = self._snapshot()
        for name, field in self._FIELDS:
            kind = METRICS[name][0]
            family_class = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = family_class(name.removesuffix("_total") if kind == "counter" else name, _help(name),
                                  labels=["cache"])
            for cache in CACHES:
                family.add_metric([cache], snapshot.get(cache, {}).get(field, 0))
            yield family

    def describe(self):
        return []


def _help(name: str) -> str:
    return METRICS[name][1]
