"""The durable webhook outbox and the retention sweeper, over a real SQLite store.

Deliveries go to a real Standard Webhooks receiver on loopback (the policy allows it).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from serve.artifact_store import ArtifactStore
from serve.jobs.open_store import open_job_store
from serve.jobs.retention import RetentionSweeper
from serve.jobs.store import JobRecord, JobStatus, WebhookOutbox
from serve.jobs.webhook_outbox import WebhookOutboxDeliverer
from serve.webhook_targets import TargetPolicy
from serve.webhooks import WebhookSender, WebhookSettings, generate_webhook_secret
from tests.support.webhook_receiver import Reply, WebhookReceiver

SECRET = generate_webhook_secret()


@pytest.fixture
def store(tmp_path):
    with open_job_store(f"sqlite://{tmp_path}/jobs.db") as job_store:
        yield job_store


@pytest.fixture
def receiver():
    made = []

    def make(replies=None):
        made.append(WebhookReceiver(SECRET, replies))
        return made[-1]

    yield make
    for one in made:
        one.close()


def _settings(**overrides) -> WebhookSettings:
    values = {"secret": SECRET, "max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0,
              "target_policy": TargetPolicy(["127.0.0.0/8"])}
    return WebhookSettings(**{**values, **overrides})


def _ended_job(store, job_id, url, event="video.completed", now=None):
    now = time.time() if now is None else now
    store.create(JobRecord(id=job_id, model="tiny", created_at=now, updated_at=now, status=JobStatus.COMPLETED,
                           webhook_url=url, webhook_outbox=WebhookOutbox.new(event, now)))


async def _deliver_until(store, settings, predicate, owner="deliverer-1", timeout=30):
    async with WebhookSender(settings) as sender:
        deliverer = WebhookOutboxDeliverer(store, sender, settings, owner, poll_interval_s=0.02)
        deliverer.start()
        try:
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, "outbox not settled in time"
                await asyncio.sleep(0.02)
        finally:
            await deliverer.stop()


def test_an_ended_jobs_webhook_is_delivered_once_in_openai_event_shape(store, receiver):
    hook = receiver()
    _ended_job(store, "video_a", hook.url)
    asyncio.run(_deliver_until(store, _settings(), lambda: store.get("video_a").webhook_outbox.state != "pending"))
    entry = store.get("video_a").webhook_outbox
    assert entry.state == "delivered" and entry.attempts == 1
    [delivery] = hook.deliveries
    assert delivery.verification_error is None
    body = json.loads(delivery.body)
    assert body == {"id": entry.event_id, "object": "event", "created_at": entry.created_at,
                    "type": "video.completed", "data": {"id": "video_a"}}
    assert delivery.headers["webhook-id"] == entry.message_id


def test_retries_keep_one_webhook_id_and_are_written_to_the_store(store, receiver):
    hook = receiver([Reply(503), Reply(500)])
    _ended_job(store, "video_b", hook.url, event="video.failed")
    asyncio.run(_deliver_until(store, _settings(), lambda: store.get("video_b").webhook_outbox.state != "pending"))
    entry = store.get("video_b").webhook_outbox
    assert entry.state == "delivered" and entry.attempts == 3
    assert {delivery.headers["webhook-id"] for delivery in hook.deliveries} == {entry.message_id}
    assert len(hook.deliveries) == 3


def test_a_receiver_that_never_answers_2xx_ends_failed_after_max_attempts(store, receiver):
    hook = receiver([Reply(500)] * 10)
    _ended_job(store, "video_c", hook.url)
    asyncio.run(_deliver_until(store, _settings(max_attempts=3),
                               lambda: store.get("video_c").webhook_outbox.state != "pending"))
    entry = store.get("video_c").webhook_outbox
    assert entry.state == "failed" and entry.attempts == 3 and entry.last_problem == "HTTP 500"
    assert len(hook.deliveries) == 3


def test_a_webhook_taken_by_a_deliverer_that_died_is_delivered_by_the_next_with_the_same_id(store, receiver):
    hook = receiver()
    _ended_job(store, "video_d", hook.url)
    # The first deliverer took it (its lease moved the due time on) and died before sending.
    taken = store.claim_webhook("deliverer-that-died", lease_seconds=0.3)
    assert taken is not None and store.claim_webhook("other", 0.3) is None
    asyncio.run(_deliver_until(store, _settings(), lambda: store.get("video_d").webhook_outbox.state != "pending",
                               owner="deliverer-after-restart"))
    [delivery] = hook.deliveries
    assert delivery.headers["webhook-id"] == taken.webhook_outbox.message_id


def test_the_sweeper_deletes_expired_records_and_their_files(store, tmp_path):
    artifacts = ArtifactStore(tmp_path / "artifacts")
    now = 1_800_000_000.0
    for job_id, expires_at in [("video_old", now - 1), ("video_kept", now + 3600)]:
        store.create(JobRecord(id=job_id, model="tiny", created_at=now - 7200, updated_at=now - 7200,
                               status=JobStatus.COMPLETED, expires_at=expires_at))
        artifacts.job_dir(job_id).mkdir(parents=True)
        (artifacts.job_dir(job_id) / "video.mp4").write_bytes(b"mp4")
    sweeper = RetentionSweeper(store, artifacts, interval_s=60, clock=lambda: now)
    assert sweeper.sweep_once() == ["video_old"]
    assert store.get("video_old") is None and not artifacts.job_dir("video_old").exists()
    assert store.get("video_kept") is not None and artifacts.job_dir("video_kept").exists()
    assert sweeper.sweep_once() == []
