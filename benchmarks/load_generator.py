"""Load test a running videoserve over its HTTP API.

    python -m benchmarks.load_generator --server http://127.0.0.1:8000 --rate 0.5 --duration 120 \\
        --max-requests 60 --mix default --seed 1 --output benchmarks/out/load_r0.5.json [--plot]
    python -m benchmarks.load_generator --server http://127.0.0.1:8000 --saturation --concurrency 8 \\
        --duration 300 --max-requests 200 --output benchmarks/out/load_saturation_c8.json

Open loop (the default): requests are sent at Poisson arrival offsets whether or not
earlier ones have finished, as independent users would send them; a closed-loop load
generator slows down with the server and so hides its queueing. ``--saturation`` is the
closed loop on purpose: ``--concurrency`` clients each send back to back, which finds
the most the server can complete per second.

Every job is followed through its server-sent event stream, ``GET /v1/videos/{id}/events``
(``--follow events``, the default): the server pushes each change, so completion and
in-progress times are exact and following costs the server one request per job. With
``--follow poll`` the generator polls ``GET /v1/videos/{id}`` instead (the server's
``openai-poll-after-ms``, but at least every ``--max-poll-interval`` seconds), as the
OpenAI SDK's ``create_and_poll`` does; times are then known to within one poll
interval, and on a small machine the polling itself takes CPU from the server. ``/metrics`` is
scraped before and after, and the report holds the deltas of the server's stage
latency, denoising step and batch-size histograms and of every cache metric.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import typer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from benchmarks.machine import describe_machine
from benchmarks.workload import WorkloadMix, WorkloadRequest, build_workload, open_loop_plan

TERMINAL_STATUSES = ("completed", "failed")
# Consecutive failed polls (or dropped event streams) of one job before it is given up as a transport error.
MAX_POLL_ERRORS = 5


class LoadSettings(BaseModel):
    """How to load the server. ``mode`` picks which of ``rate_per_s`` / ``concurrency`` applies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["open_loop", "closed_loop"] = "open_loop"
    rate_per_s: float | None = Field(None, gt=0, description="Open loop: mean Poisson arrival rate.")
    concurrency: int | None = Field(None, ge=1, description="Closed loop: clients sending back to back.")
    duration_s: float = Field(gt=0, description="Open loop: arrivals fall in [0, duration). Closed: no new "
                                                "request starts after it.")
    max_requests: int = Field(ge=1)
    seed: int = 0
    request_timeout_s: float = Field(600.0, gt=0, description="A job not finished this long after its submit "
                                                               "is recorded as 'timeout'.")
    follow: Literal["events", "poll"] = Field("events", description="How each job is followed to its end.")
    max_poll_interval_s: float = Field(0.2, gt=0, description="follow=poll: poll at least this often.")

    @model_validator(mode="after")
    def _mode_fields(self) -> LoadSettings:
        if self.mode == "open_loop" and self.rate_per_s is None:
            raise ValueError("rate_per_s: required in open_loop mode")
        if self.mode == "closed_loop" and self.concurrency is None:
            raise ValueError("concurrency: required in closed_loop mode")
        return self


@dataclass(frozen=True)
class RequestOutcome:
    """One request as the client saw it. Times are seconds since the run started."""

    index: int
    size: str
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    image_to_video: bool
    prompt: str
    scheduled_s: float
    submit_s: float
    accepted_s: float | None
    first_in_progress_s: float | None
    finished_s: float | None
    # completed | failed (the server's verdict) | rejected (refused at submit) | error | timeout
    status: str
    http_status: int | None
    error: str | None
    video_id: str | None
    server: dict[str, Any] | None  # the last video object the server returned

    @property
    def latency_s(self) -> float | None:
        return None if self.finished_s is None or self.status != "completed" else self.finished_s - self.submit_s

    @property
    def queue_wait_s(self) -> float | None:
        return None if self.first_in_progress_s is None else self.first_in_progress_s - self.submit_s


# ---- statistics -------------------------------------------------------------------------


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default method)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100 (got {q})")
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(values: Sequence[float], quantiles: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "mean": ...}``; None everywhere for no values, so reports keep their shape."""
    summary: dict[str, float | None] = {f"p{q:g}": (percentile(values, q) if values else None) for q in quantiles}
    summary["mean"] = sum(values) / len(values) if values else None
    return summary


def summarize_outcomes(outcomes: Sequence[RequestOutcome]) -> dict[str, Any]:
    completed = [outcome for outcome in outcomes if outcome.status == "completed"]
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.status != "completed":
            rejected = outcome.status == "rejected"
            reason = f"rejected (HTTP {outcome.http_status})" if rejected else outcome.status
            failures[reason] = failures.get(reason, 0) + 1
    throughput = None
    window = None
    if completed:
        # From the first submit to the last completion: the span over which the work was done.
        window = max(outcome.finished_s for outcome in completed) - min(outcome.submit_s for outcome in outcomes)
        throughput = len(completed) / window if window > 0 else None
    waits = [outcome.queue_wait_s for outcome in completed if outcome.queue_wait_s is not None]
    return {
        "submitted": len(outcomes),
        "completed": len(completed),
        "failures": len(outcomes) - len(completed),
        "failures_by_reason": failures,
        "window_s": window,
        "throughput_videos_per_s": throughput,
        "latency_s": latency_summary([outcome.latency_s for outcome in completed]),
        "queue_wait_s": latency_summary(waits, quantiles=(50, 95)),
        # Completed jobs that went from queued to completed between two polls (or events).
        "queue_wait_unobserved": len(completed) - len(waits),
        # How late the generator itself sent requests: large values mean the client, not
        # the server, was the bottleneck and the open-loop figures are not valid.
        "max_send_lag_s": max((outcome.submit_s - outcome.scheduled_s for outcome in outcomes), default=None),
    }


# ---- /metrics deltas --------------------------------------------------------------------

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
_STAGE_LATENCY = "videoserve_stage_latency_seconds"
_HIT_VALUES = {"hit", "hits"}
_MISS_VALUES = {"miss", "misses"}


def parse_exposition(text: str) -> dict[SeriesKey, tuple[str, float]]:
    """Every sample as ``(sample name, sorted labels) -> (family type, value)``."""
    from prometheus_client.parser import text_string_to_metric_families

    series: dict[SeriesKey, tuple[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name.endswith("_created"):
            continue  # creation timestamps, not measurements
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            series[(sample.name, tuple(sorted(sample.labels.items())))] = (family.type, sample.value)
    return series


def series_deltas(before: str, after: str) -> dict[SeriesKey, float]:
    """Counter and histogram increases over the run; gauges read as their value after it.

    A series that only appears afterwards started at zero; one that went down was reset
    (the server restarted), so its whole value after counts.
    """
    old = parse_exposition(before)
    deltas = {}
    for key, (kind, value) in parse_exposition(after).items():
        if kind == "gauge":
            deltas[key] = value
            continue
        previous = old.get(key, (kind, 0.0))[1]
        deltas[key] = value - previous if value >= previous else value
    return deltas


def metrics_delta(before: str, after: str) -> dict[str, Any]:
    """What the server did between two /metrics scrapes, in the report's terms."""
    deltas = series_deltas(before, after)
    return {
        "stage_latency": _stage_latency(deltas),
        "denoise_batch_size": _histogram(deltas, "videoserve_denoise_batch_size", integer_buckets=True),
        "denoise_step_seconds": _histogram(deltas, "videoserve_denoise_step_seconds"),
        "caches": _caches(deltas),
        # Work the server redid: a run with retries measured more than its requests.
        "job_retries": deltas.get(("videoserve_job_retries_total", ()), 0.0),
        "stage_failures": {dict(labels).get("stage", ""): value for (name, labels), value in sorted(deltas.items())
                           if name == "videoserve_stage_failures_total" and value},
    }


def _stage_latency(deltas: dict[SeriesKey, float]) -> dict[str, dict[str, float | None]]:
    stages: dict[str, dict[str, float | None]] = {}
    for (name, labels), value in deltas.items():
        stage = dict(labels).get("stage")
        if stage is None or name not in (f"{_STAGE_LATENCY}_sum", f"{_STAGE_LATENCY}_count"):
            continue
        entry = stages.setdefault(stage, {"count": 0.0, "sum_s": 0.0})
        entry["count" if name.endswith("_count") else "sum_s"] = value
    for entry in stages.values():
        entry["mean_s"] = entry["sum_s"] / entry["count"] if entry["count"] else None
    return dict(sorted(stages.items()))


def _histogram(deltas: dict[SeriesKey, float], name: str, integer_buckets: bool = False) -> dict[str, Any]:
    """Count, mean and per-bucket counts of an unlabelled histogram's increase."""
    count = deltas.get((f"{name}_count", ()), 0.0)
    total = deltas.get((f"{name}_sum", ()), 0.0)
    cumulative = sorted(
        (float(dict(labels)["le"]), value) for (sample, labels), value in deltas.items() if sample == f"{name}_bucket"
    )
    buckets = []
    previous_le, previous_count = None, 0.0
    for le, running in cumulative:
        # JSON has no infinity: the last (+Inf) bucket's bound is null.
        buckets.append({"label": _bucket_label(previous_le, le, integer_buckets), "le": None if math.isinf(le) else le,
                        "count": running - previous_count})
        previous_le, previous_count = le, running
    return {"count": count, "mean": total / count if count else None, "buckets": buckets}


def _bucket_label(low: float | None, high: float, integer: bool) -> str:
    if math.isinf(high):
        return f">{low:g}" if low is not None else "all"
    if not integer:
        return f"<={high:g}" if low is None else f"({low:g}, {high:g}]"
    first = 0 if low is None else math.floor(low) + 1
    last = math.floor(high)
    if low is None:
        return f"<={last}"
    return str(last) if first == last else f"{first}-{last}"


def _caches(deltas: dict[SeriesKey, float]) -> dict[str, Any]:
    """Every series whose name mentions a cache, and hit ratios where hits and misses are told apart.

    Two conventions are recognised: a label whose value is hit/miss
    (``..._lookups_total{result="hit"}``), or separate ``..._hits`` / ``..._misses`` series.
    """
    series = {key: value for key, value in deltas.items() if "cache" in key[0]}
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, float]] = {}
    for (name, labels), value in series.items():
        outcome, rest = None, labels
        for label, label_value in labels:
            if label_value.lower() in _HIT_VALUES | _MISS_VALUES:
                outcome = "hits" if label_value.lower() in _HIT_VALUES else "misses"
                rest = tuple(item for item in labels if item[0] != label)
                break
        if outcome is None:
            for word, kind in (("hits", "hits"), ("hit", "hits"), ("misses", "misses"), ("miss", "misses")):
                if f"_{word}" in name:
                    outcome, name = kind, name.replace(f"_{word}", "_{hits,misses}", 1)
                    break
        if outcome is not None:
            group = groups.setdefault((name, rest), {"hits": 0.0, "misses": 0.0})
            group[outcome] += value
    ratios = [
        {"metric": name, "labels": dict(labels), "hits": group["hits"], "misses": group["misses"],
         "hit_ratio": group["hits"] / (group["hits"] + group["misses"]) if group["hits"] + group["misses"] else None}
        for (name, labels), group in sorted(groups.items())
    ]
    return {
        "series": [{"name": name, "labels": dict(labels), "value": value}
                   for (name, labels), value in sorted(series.items())],
        "hit_ratios": ratios,
    }


# ---- the HTTP client --------------------------------------------------------------------


class _RunClock:
    def __init__(self):
        self.started = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self.started


async def submit_and_follow(client: httpx.AsyncClient, index: int, request: WorkloadRequest, clock: _RunClock,
                            scheduled_s: float, settings: LoadSettings) -> RequestOutcome:
    """Send one request, then follow its job until it ends or times out."""
    seen: dict[str, Any] = {
        "accepted_s": None, "first_in_progress_s": None, "finished_s": None, "http_status": None, "video_id": None,
        "server": None,
    }

    def outcome(status: str, error: str | None = None) -> RequestOutcome:
        return RequestOutcome(
            index=index, size=request.size, num_frames=request.num_frames,
            num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
            image_to_video=request.is_image_to_video, prompt=request.prompt, scheduled_s=scheduled_s,
            submit_s=submit_s, status=status, error=error, **seen,
        )

    submit_s = clock.now()
    try:
        response = await _post_video(client, request)
    except httpx.HTTPError as error:
        return outcome("error", f"submit: {error!r}")
    seen["http_status"] = response.status_code
    if response.status_code != 200:
        return outcome("rejected", _error_message(response))
    seen["accepted_s"] = clock.now()
    video = response.json()
    seen["video_id"] = video["id"]
    deadline = submit_s + settings.request_timeout_s
    follow = _follow_events if settings.follow == "events" else _follow_by_polling
    try:
        video = await asyncio.wait_for(follow(client, response, seen, clock, settings),
                                       timeout=max(0.0, deadline - clock.now()))
    except TimeoutError:
        # Cancelled, so that a job the run gave up on does not load the server during the next run.
        cancelled = await _cancel(client, seen["video_id"])
        return outcome("timeout", f"not finished {settings.request_timeout_s:g} s after submit"
                                  f"{'; cancelled' if cancelled else '; could not be cancelled'}")
    except _FollowError as error:
        return outcome("error", str(error))
    seen["finished_s"] = clock.now()
    failed = video["status"] == "failed"
    return outcome(video["status"], (video.get("error") or {}).get("message", "failed") if failed else None)


class _FollowError(Exception):
    pass


def _saw(video: dict[str, Any], seen: dict[str, Any], clock: _RunClock) -> None:
    seen["server"] = video
    if video["status"] == "in_progress" and seen["first_in_progress_s"] is None:
        seen["first_in_progress_s"] = clock.now()


async def _follow_events(client: httpx.AsyncClient, created: httpx.Response, seen: dict[str, Any], clock: _RunClock,
                         settings: LoadSettings) -> dict[str, Any]:
    """Read the job's event stream until it ends; returns the final video object."""
    video = created.json()
    _saw(video, seen, clock)
    if video["status"] in TERMINAL_STATUSES:
        return video
    timeout = httpx.Timeout(60.0, read=settings.request_timeout_s)
    for attempt in range(MAX_POLL_ERRORS):
        try:
            async with client.stream("GET", f"/v1/videos/{video['id']}/events", timeout=timeout) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _FollowError(f"events: HTTP {response.status_code}: {_error_message(response)}")
                event = None
                async for line in response.aiter_lines():
                    if line.startswith("event:"):
                        event = line.split(":", 1)[1].strip()
                    elif line.startswith("data:"):
                        data = json.loads(line.split(":", 1)[1])
                        if event == "deleted":
                            raise _FollowError("events: the job was deleted")
                        _saw(data, seen, clock)
                        if event == "done":
                            return data
        except httpx.HTTPError as error:
            if attempt == MAX_POLL_ERRORS - 1:
                raise _FollowError(f"events: {error!r}") from None
        # The stream ended without a verdict (the server's stream limit, a dropped
        # connection): open it again; the first event is the job's current state.
    raise _FollowError(f"events: the stream ended {MAX_POLL_ERRORS} times without a final status")


async def _follow_by_polling(client: httpx.AsyncClient, response: httpx.Response, seen: dict[str, Any],
                             clock: _RunClock, settings: LoadSettings) -> dict[str, Any]:
    """Poll the job until it ends, as the OpenAI SDK does; returns the final video object."""
    video = response.json()
    poll_errors = 0
    while True:
        _saw(video, seen, clock)
        if video["status"] in TERMINAL_STATUSES:
            return video
        await asyncio.sleep(_poll_delay(response, settings.max_poll_interval_s))
        try:
            response = await client.get(f"/v1/videos/{video['id']}")
        except httpx.HTTPError as error:
            poll_errors += 1
            if poll_errors >= MAX_POLL_ERRORS:
                raise _FollowError(f"poll: {error!r}") from None
            continue
        if response.status_code != 200:
            raise _FollowError(f"poll: HTTP {response.status_code}: {_error_message(response)}")
        poll_errors = 0
        video = response.json()


async def _post_video(client: httpx.AsyncClient, request: WorkloadRequest) -> httpx.Response:
    if request.image is None:
        return await client.post("/v1/videos", json=request.api_fields())
    form = {key: str(value) for key, value in request.api_fields().items()}
    return await client.post("/v1/videos", data=form, files={"input_reference": ("first_frame.png", request.image,
                                                                                  "image/png")})


async def _cancel(client: httpx.AsyncClient, video_id: str) -> bool:
    try:
        return (await client.delete(f"/v1/videos/{video_id}")).status_code == 200
    except httpx.HTTPError:
        return False


def _poll_delay(response: httpx.Response, max_interval_s: float) -> float:
    hint = response.headers.get("openai-poll-after-ms", "")
    if hint.isdigit():
        return min(int(hint) / 1000, max_interval_s)
    return max_interval_s


def _error_message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def run_open_loop(client: httpx.AsyncClient, requests: Sequence[WorkloadRequest], arrivals: Sequence[float],
                        settings: LoadSettings) -> list[RequestOutcome]:
    """Send request i at ``arrivals[i]`` seconds, regardless of how many are still running."""
    if len(requests) != len(arrivals):
        raise ValueError(f"{len(requests)} requests but {len(arrivals)} arrival times")
    clock = _RunClock()

    async def one(index: int) -> RequestOutcome:
        await asyncio.sleep(max(0.0, arrivals[index] - clock.now()))
        return await submit_and_follow(client, index, requests[index], clock, arrivals[index], settings)

    return list(await asyncio.gather(*(one(index) for index in range(len(requests)))))


async def run_closed_loop(client: httpx.AsyncClient, requests: Sequence[WorkloadRequest],
                          settings: LoadSettings) -> list[RequestOutcome]:
    """``settings.concurrency`` clients, each sending its next request when its last one ends."""
    clock = _RunClock()
    pending = iter(range(len(requests)))
    outcomes: list[RequestOutcome] = []

    async def client_loop() -> None:
        while clock.now() < settings.duration_s:
            index = next(pending, None)
            if index is None:
                return
            outcome = await submit_and_follow(client, index, requests[index], clock, clock.now(), settings)
            outcomes.append(outcome)
            if outcome.status in ("rejected", "error"):
                # Without a pause a refused client would spin through the workload in no time.
                await asyncio.sleep(settings.max_poll_interval_s * 5)

    await asyncio.gather(*(client_loop() for _ in range(settings.concurrency or 1)))
    return sorted(outcomes, key=lambda outcome: outcome.index)


async def run_load_async(server: str, settings: LoadSettings, mix: WorkloadMix) -> dict[str, Any]:
    """Run one load test against ``server`` and return the report (see ``run_load``)."""
    base = server.rstrip("/")
    if settings.mode == "open_loop":
        arrivals, requests = open_loop_plan(mix, settings.rate_per_s, settings.duration_s, settings.max_requests,
                                            settings.seed)
    else:
        arrivals, requests = [], build_workload(mix, settings.max_requests, settings.seed)
    # No connection limit: a request waiting for a free connection would be sent late,
    # and the open loop would quietly turn into a closed one.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(60.0), limits=limits) as client:
        model = await _served_model(client, mix)
        metrics_before = await _scrape(client)
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        if settings.mode == "open_loop":
            outcomes = await run_open_loop(client, requests, arrivals, settings)
        else:
            outcomes = await run_closed_loop(client, requests, settings)
        metrics_after = await _scrape(client)
    if isinstance(metrics_before, str) and isinstance(metrics_after, str):
        server_metrics: dict[str, Any] = metrics_delta(metrics_before, metrics_after)
    else:
        failed = [repr(scrape) for scrape in (metrics_before, metrics_after) if not isinstance(scrape, str)]
        server_metrics = {"error": f"GET /metrics failed: {'; '.join(failed)}"}
    return {
        "kind": "load",
        "server": base,
        "model": model,
        "started_at": started_at,
        "settings": settings.model_dump(),
        "mix": mix.model_dump(mode="json"),
        "client_machine": client_machine(),
        "summary": summarize_outcomes(outcomes),
        "server_metrics": server_metrics,
        "requests": [{**asdict(outcome), "latency_s": outcome.latency_s, "queue_wait_s": outcome.queue_wait_s}
                     for outcome in outcomes],
    }


def run_load(server: str, settings: LoadSettings, mix: WorkloadMix | None = None) -> dict[str, Any]:
    """Load ``server`` as ``settings`` say with requests from ``mix``; returns the report dict.

    The report's ``summary`` holds throughput (completed videos/s from the first submit
    to the last completion), end-to-end latency p50/p95/p99, queue wait p50/p95 and the
    failure count; ``server_metrics`` the /metrics deltas; ``requests`` every request.
    """
    return asyncio.run(run_load_async(server, settings, mix or WorkloadMix()))


async def _served_model(client: httpx.AsyncClient, mix: WorkloadMix) -> dict[str, Any]:
    """The server's model; refuses a mix whose requests that model would all reject."""
    response = await client.get("/v1/models")
    response.raise_for_status()
    model = response.json()["data"][0]
    tasks = set(model.get("tasks") or ())
    if "i2v" not in tasks and mix.i2v_fraction > 0:
        raise ValueError(f"i2v_fraction: {model['id']} is a text-to-video model; the mix must have 0 "
                         f"(got {mix.i2v_fraction})")
    if "t2v" not in tasks and mix.i2v_fraction < 1:
        raise ValueError(f"i2v_fraction: {model['id']} is an image-to-video model and needs an image on every "
                         f"request; the mix must have 1 (got {mix.i2v_fraction})")
    return model


async def _scrape(client: httpx.AsyncClient) -> str | httpx.HTTPError:
    """The exposition text, or why it could not be read (the load figures stand without it)."""
    try:
        response = await client.get("/metrics")
        response.raise_for_status()
    except httpx.HTTPError as error:
        return error
    return response.text


def client_machine() -> dict[str, Any]:
    """The machine the load generator ran on (without importing torch)."""
    return describe_machine(httpx=httpx.__version__)


def main(
    server: Annotated[str, typer.Option(help="videoserve base URL.")] = "http://127.0.0.1:8000",
    rate: Annotated[float, typer.Option(help="Open loop: mean arrivals per second (Poisson).")] = 0.5,
    duration: Annotated[float, typer.Option(help="Arrivals (closed loop: new requests) start in [0, S).")] = 60.0,
    max_requests: Annotated[int, typer.Option(help="At most this many requests.")] = 100,
    mix: Annotated[str, typer.Option(help="'default' or a WorkloadMix JSON file.")] = "default",
    seed: Annotated[int, typer.Option(help="Seeds arrivals and request contents.")] = 0,
    saturation: Annotated[bool, typer.Option("--saturation", help="Closed loop: --concurrency clients back to back.")
                          ] = False,
    concurrency: Annotated[int, typer.Option(help="Clients in --saturation mode.")] = 4,
    request_timeout: Annotated[float, typer.Option(help="Give up on a job this long after its submit.")] = 600.0,
    follow: Annotated[str, typer.Option(help="events: read each job's event stream; poll: poll it.")] = "events",
    max_poll_interval: Annotated[float, typer.Option(help="--follow poll: poll each job at least this often (s).")
                                 ] = 0.2,
    output: Annotated[Path, typer.Option(help="JSON report.")] = Path("benchmarks/out/load.json"),
    plot: Annotated[bool, typer.Option("--plot", help="Also write PNG plots next to the report.")] = False,
) -> None:
    try:
        workload_mix = WorkloadMix.load(mix)
        settings = LoadSettings(
            mode="closed_loop" if saturation else "open_loop",
            rate_per_s=None if saturation else rate,
            concurrency=concurrency if saturation else None,
            duration_s=duration,
            max_requests=max_requests,
            seed=seed,
            request_timeout_s=request_timeout,
            follow=follow,
            max_poll_interval_s=max_poll_interval,
        )
        report = run_load(server, settings, workload_mix)
    except (ValueError, httpx.HTTPError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from None
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    typer.echo(json.dumps({"output": str(output), **report["summary"]}, indent=2))
    if plot:
        from benchmarks.report_plots import plot_load_report

        for path in plot_load_report(report, output.parent, output.stem):
            typer.echo(f"wrote {path}")


if __name__ == "__main__":
    typer.run(main)
