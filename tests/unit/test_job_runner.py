"""Job runner policies and API back-pressure, without a Ray cluster.

The runner talks to stages through Ray Serve handles; no real stage can be made to fail
on demand, so the failing stage here is a stand-in object with the handle's call shape.
Everything else (job store, artifact store, metrics, FastAPI routes) is real.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve.api.create_request import create_from_fields, parse_create_fields
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.runner import JobRunner, ModelRoute, StageHandles
from serve.jobs.open_store import open_job_store
from serve.jobs.store import JobRecord, JobStatus
from serve.metrics import VideoServeMetrics
from serve.video_service import VideoService


class _CrashingStage:
    """Stands in for a DeploymentHandle method whose replica keeps crashing."""

    calls = 0

    def remote(self, *args):
        _CrashingStage.calls += 1
        return self._crash()  # awaited by the runner as a DeploymentResponse is

    async def _crash(self):
        raise RuntimeError("text encoder replica crashed")


class _StageHandleStandIn:
    encode = _CrashingStage()


def _service(tmp_path, spec, **jobs):
    config = AppConfig(storage={"state_dir": str(tmp_path)}, jobs={"lease_seconds": 5, "poll_interval_seconds": 0.01, **jobs})
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {s.value: n for s, n in store.count_by_status().items()})
    artifacts = ArtifactStore(config.storage.resolved_artifact_dir())
    return config, store, metrics, artifacts


def _run_until_failed(runner: JobRunner, store, job_id: str = "video_poisoned") -> None:
    """Run ``runner`` until ``job_id`` has ended failed (a minute at most), then stop it."""
    async def run_until_final():
        runner.start()
        try:
            while store.get(job_id).status is not JobStatus.FAILED:
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    asyncio.run(asyncio.wait_for(run_until_final(), timeout=60))


def _queued_job(spec, store, job_id="video_poisoned"):
    now = time.time()
    engine = {"prompt": "a", "negative_prompt": "", "width": 32, "height": 32, "num_frames": 5,
              "num_inference_steps": 1, "guidance_scale": 1.0, "flow_shift": 3.0, "seed": 1, "fps": 16}
    store.create(JobRecord(id=job_id, model=spec.name, created_at=now, updated_at=now,
                           params={"engine": engine, "options": {}}))


def test_a_poisoned_job_is_retried_a_bounded_number_of_times_then_fails_with_its_reason(tmp_path, tiny_spec):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec, max_attempts=3)
    _queued_job(tiny_spec, store)
    handles = StageHandles(text_encoder=_StageHandleStandIn(), denoiser=None, vae_decoder=None, post_processor=None)
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics)
    _CrashingStage.calls = 0

    async def run_until_final():
        runner.start()
        try:
            while store.get("video_poisoned").status not in (JobStatus.FAILED, JobStatus.COMPLETED):
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    asyncio.run(asyncio.wait_for(run_until_final(), timeout=60))
    job = store.get("video_poisoned")
    assert job.status is JobStatus.FAILED
    assert job.attempts == 3 == _CrashingStage.calls
    # The client learns which stage failed and how often; the exception's text stays in the log.
    assert job.error_code == "stage_failed"
    assert job.error_message == "the text_encoder stage failed (attempt 3 of 3)"
    assert "crashed" not in job.error_message
    assert metrics.job_retries._value.get() == 2
    assert metrics.jobs_finished.labels("failed")._value.get() == 1


def test_jobs_queued_through_this_replica_are_claimed_without_waiting_for_the_poll(tmp_path, tiny_spec):
    # The store poll is an hour apart: both runs of the job (the first, and the retry after
    # its failure) can only start because the create and the re-queue pushed a wake-up.
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec, max_attempts=2, poll_interval_seconds=3600)
    handles = StageHandles(text_encoder=_StageHandleStandIn(), denoiser=None, vae_decoder=None, post_processor=None)
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics)
    service = VideoService(config, {tiny_spec.name: tiny_spec}, store, artifacts, metrics, runner, expander_enabled=False)
    assert service.updates is runner.updates
    _CrashingStage.calls = 0

    async def create_and_run():
        runner.start()
        await asyncio.sleep(0.1)  # the claim loop has found nothing and waits
        try:
            created = await create_from_fields(service, parse_create_fields({"prompt": "a"}), None)
            while store.get(created.id).status is not JobStatus.FAILED:
                await asyncio.sleep(0.02)
            return created.id
        finally:
            await runner.stop()

    job_id = asyncio.run(asyncio.wait_for(create_and_run(), timeout=60))
    assert store.get(job_id).attempts == 2 == _CrashingStage.calls


def test_a_full_queue_answers_429_with_retry_after_and_keeps_serving(tmp_path, tiny_spec):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec, max_queued=2)
    api = create_api()
    api.state.service = VideoService(config, {tiny_spec.name: tiny_spec}, store, artifacts, metrics, runner=None, expander_enabled=False)
    with TestClient(api) as client:
        accepted = [client.post("/v1/videos", json={"prompt": f"clip {n}"}) for n in range(2)]
        assert [response.status_code for response in accepted] == [200, 200]
        assert [response.json()["queue_position"] for response in accepted] == [0, 1]
        refused = client.post("/v1/videos", json={"prompt": "one too many"})
        assert refused.status_code == 429
        # From the queue: one job must start first, at the assumed 30 s a job, 16 at a time.
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert client.get(f"/v1/videos/{accepted[0].json()['id']}").status_code == 200
    # Nothing was lost: both accepted jobs are in the store, the refused one is not.
    assert store.count_by_status()[JobStatus.QUEUED] == 2


def test_a_job_whose_runner_vanished_is_claimed_again_after_its_lease(tmp_path, tiny_spec):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec)
    _queued_job(tiny_spec, store, "video_orphan")
    now = time.time()  # the store's clock is injected: no sleeping until the lease runs out
    first = store.claim("runner-that-dies", lease_seconds=0.2, now=now)
    assert first.id == "video_orphan" and store.claim("other", lease_seconds=5, now=now + 0.1) is None
    again = store.claim("other", lease_seconds=5, now=now + 0.3)
    assert again.id == "video_orphan" and again.attempts == 2 and again.lease_owner == "other"


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED])
def test_finished_jobs_are_never_claimed(tmp_path, tiny_spec, status):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec)
    _queued_job(tiny_spec, store, "video_done")
    store.update("video_done", status=status)
    assert store.claim("runner", lease_seconds=5) is None


class _ManualClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Call:
    """A stage method's handle shape: ``.remote(...)`` gives an awaitable result."""

    def __init__(self, result):
        self.result = result

    def remote(self, *args):
        async def answer():
            return self.result

        return answer()


class _SteppingDenoiser:
    """Stands in for the Denoiser's streaming handle: ``steps`` progress events, each
    ``step_seconds`` apart on the runner's injected clock, then the latents."""

    def __init__(self, clock: _ManualClock, steps: int, step_seconds: float):
        self.clock, self.steps, self.step_seconds = clock, steps, step_seconds

    def options(self, stream: bool):
        assert stream
        return self

    @property
    def denoise(self):
        return self

    def remote(self, *args):
        import torch

        from engine.batching.async_denoise_engine import DenoiseDone, DenoiseProgress
        from engine.stage_types import Latents

        outer = self

        class Stream:
            def cancel(self):
                pass

            async def __aiter__(self):
                for step in range(1, outer.steps + 1):
                    outer.clock.now += outer.step_seconds
                    yield DenoiseProgress(step, outer.steps, outer.step_seconds, 1)
                yield DenoiseDone(Latents(request_id="stand-in", latents=torch.zeros(1)))

        return Stream().__aiter__()


class _CountingStore:
    """The real SQLite store, counting the writes of the denoising stage."""

    def __init__(self, store):
        self._store = store
        self.denoiser_writes = 0

    def update(self, job_id, fence=None, **changes):
        if changes.get("stage") == "denoiser":
            self.denoiser_writes += 1
        return self._store.update(job_id, fence, **changes)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.mark.parametrize(("interval", "durable_writes"), [(1.0, 3), (0.0, 10)])
def test_denoising_progress_is_written_at_most_once_per_interval_and_pushed_every_step(
        tmp_path, tiny_spec, interval, durable_writes):
    # Ten steps 0.3 s apart on the injected clock, written every 1.0 s: at the first step
    # (the stage change), then at steps 5 and 9 (1.2 s after the last write); 0 writes each.
    from engine.post_processing.post_processor import PostProcessResult

    config, real_store, metrics, artifacts = _service(tmp_path, tiny_spec, progress_write_interval_seconds=interval)
    store = _CountingStore(real_store)
    _queued_job(tiny_spec, real_store)
    clock = _ManualClock()
    result = PostProcessResult(str(tmp_path / "v.mp4"), str(tmp_path / "t.webp"), None, 5, 32, 32, 16)
    for written in (result.video_path, result.thumbnail_path):  # the runner fsyncs them before completing
        Path(written).write_bytes(b"stand-in")
    handles = StageHandles(text_encoder=type("T", (), {"encode": _Call("text")})(),
                           denoiser=_SteppingDenoiser(clock, steps=10, step_seconds=0.3),
                           vae_decoder=type("V", (), {"decode": _Call("frames")})(),
                           post_processor=type("P", (), {"process": _Call(result)})())
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics,
                       clock=clock)
    pushed_steps = []

    async def run_until_final():
        with runner.updates.follow("video_poisoned") as pushed:
            runner.start()
            try:
                while True:
                    record = await asyncio.wait_for(pushed.get(), 30)
                    if record.stage == "denoiser":
                        pushed_steps.append(record.step)
                    if record.status is JobStatus.COMPLETED:
                        return
            finally:
                await runner.stop()

    asyncio.run(asyncio.wait_for(run_until_final(), timeout=60))
    assert real_store.get("video_poisoned").status is JobStatus.COMPLETED
    assert store.denoiser_writes == durable_writes
    assert pushed_steps == list(range(1, 11))  # every step reached the job's event streams
    assert metrics.steps._value.get() == 10


class _HangingStage:
    """A stage whose replica never answers (it is stuck, not crashed)."""

    def remote(self, *args):
        class Response:
            cancelled = False

            def __await__(self):
                return asyncio.sleep(3600).__await__()

            def cancel(self):
                Response.cancelled = True

        return Response()


def test_a_stage_past_its_deadline_fails_the_attempt_with_stage_timeout(tmp_path, tiny_spec):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec, max_attempts=2, stage_timeout_seconds=0.2)
    _queued_job(tiny_spec, store)
    handles = StageHandles(text_encoder=type("T", (), {"encode": _HangingStage()})(), denoiser=None,
                           vae_decoder=None, post_processor=None)
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics)

    _run_until_failed(runner, store)
    job = store.get("video_poisoned")
    assert job.error_code == "stage_timeout" and job.attempts == 2
    assert job.error_message == "the text_encoder stage did not finish within 0.2 s (attempt 2 of 2)"


def _completing_handles(tmp_path, clock, steps=3):
    from engine.post_processing.post_processor import PostProcessResult

    result = PostProcessResult(str(tmp_path / "v.mp4"), str(tmp_path / "t.webp"), None, 5, 32, 32, 16)
    for written in (result.video_path, result.thumbnail_path):
        Path(written).write_bytes(b"stand-in")
    return StageHandles(text_encoder=type("T", (), {"encode": _Call("text")})(),
                        denoiser=_SteppingDenoiser(clock, steps=steps, step_seconds=0.3),
                        vae_decoder=type("V", (), {"decode": _Call("frames")})(),
                        post_processor=type("P", (), {"process": _Call(result)})())


def test_the_write_that_completes_a_job_sets_its_expiry_and_queues_its_webhook(tmp_path, tiny_spec):
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec)
    _queued_job(tiny_spec, store, "video_hooked")
    store.update("video_hooked", webhook_url="https://hooks.example.com/v")  # never contacted: no deliverer here
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, _completing_handles(tmp_path, _ManualClock()))},
                       store, artifacts, metrics)
    woken = []
    runner.on_outbox_written = lambda: woken.append(True)

    async def run_until_final():
        runner.start()
        try:
            while store.get("video_hooked").status is not JobStatus.COMPLETED:
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    asyncio.run(asyncio.wait_for(run_until_final(), timeout=60))
    job = store.get("video_hooked")
    assert job.expires_at == pytest.approx(job.completed_at + config.storage.retention_seconds)
    assert job.webhook_outbox.type == "video.completed" and job.webhook_outbox.state == "pending"
    assert job.lease_owner is None and woken == [True]


def test_a_runner_that_lost_its_lease_writes_nothing_more(tmp_path, tiny_spec):
    # The runner is slow (its heartbeat never ran); meanwhile another took the job over.
    config, store, metrics, artifacts = _service(tmp_path, tiny_spec)
    _queued_job(tiny_spec, store, "video_taken_over")
    clock = _ManualClock()
    handles = _completing_handles(tmp_path, clock, steps=5)
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics)
    original_follow = runner._follow_denoising

    async def follow_then_lose_the_lease(stream, job_id):
        store.update(job_id, lease_owner="runner-that-took-over", lease_expires_at=time.time() + 60)
        return await original_follow(stream, job_id)

    runner._follow_denoising = follow_then_lose_the_lease

    async def run_until_idle():
        runner.start()
        try:
            while store.get("video_taken_over").lease_owner != "runner-that-took-over" or runner.running_jobs:
                await asyncio.sleep(0.02)
        finally:
            await runner.stop()

    asyncio.run(asyncio.wait_for(run_until_idle(), timeout=60))
    job = store.get("video_taken_over")
    assert job.status is JobStatus.IN_PROGRESS and job.lease_owner == "runner-that-took-over"
    assert job.stage is None or job.stage == "text_encoder"  # nothing the old runner did after it lost the lease
    assert metrics.jobs_finished.labels("completed")._value.get() == 0


class _StoreWithAnOutage:
    """The real store, unreachable for its first ``failing_updates`` updates: an outage on
    demand (a real Redis restart cannot be timed to land on one write)."""

    def __init__(self, store, failing_updates: int):
        self._store, self.failing_updates = store, failing_updates

    def update(self, *args, **kwargs):
        from serve.jobs.store import JobStoreUnavailable

        if self.failing_updates > 0:
            self.failing_updates -= 1
            raise JobStoreUnavailable("the job store (redis) is unreachable: ConnectionError")
        return self._store.update(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_short_store_outage_costs_the_job_no_attempt(tmp_path, tiny_spec):
    # One attempt only: had the outage at the first progress write counted as a failure, the
    # job would end failed before its text encoder ever ran.
    config, real_store, metrics, artifacts = _service(tmp_path, tiny_spec, max_attempts=1)
    store = _StoreWithAnOutage(real_store, failing_updates=3)
    _queued_job(tiny_spec, real_store)
    handles = StageHandles(text_encoder=_StageHandleStandIn(), denoiser=None, vae_decoder=None, post_processor=None)
    runner = JobRunner(config, {tiny_spec.name: ModelRoute(tiny_spec, handles)}, store, artifacts, metrics)
    _CrashingStage.calls = 0

    _run_until_failed(runner, real_store)
    job = real_store.get("video_poisoned")
    assert store.failing_updates == 0  # the outage happened, and the writes went through after it
    assert _CrashingStage.calls == 1 and job.attempts == 1
    assert job.error_message == "the text_encoder stage failed (attempt 1 of 1)"


def test_an_unreachable_store_answers_503_with_retry_after(tmp_path, tiny_spec):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from serve.jobs.redis_store import RedisJobStore
    from tests.support.redis_server import running_redis_server

    config, _, metrics, artifacts = _service(tmp_path, tiny_spec)
    with running_redis_server(tmp_path / "redis") as server:
        store = RedisJobStore(redis.Redis.from_url(server.url, decode_responses=True, retry=Retry(NoBackoff(), 0)))
        api = create_api()
        api.state.service = VideoService(config, {tiny_spec.name: tiny_spec}, store, artifacts, metrics, runner=None,
                                         expander_enabled=False)
        with TestClient(api) as client:
            assert client.post("/v1/videos", json={"prompt": "before"}).status_code == 200
    with TestClient(api) as client:  # the server is gone now
        for response in (client.post("/v1/videos", json={"prompt": "during"}), client.get("/v1/videos"),
                         client.get("/healthz")):
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "2"
            assert response.json()["error"]["code"] == "store_unavailable"
            assert "redis" not in response.text.lower()  # the detail goes to the log
