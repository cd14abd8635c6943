"""The in-replica push of job records to event streams and to the claim loop."""

from __future__ import annotations

import asyncio
import time

from serve.jobs.store import JobRecord, JobStatus
from serve.jobs.updates import FOLLOWER_BACKLOG, JobUpdates


def _record(job_id: str, status: JobStatus = JobStatus.IN_PROGRESS, step: int = 0) -> JobRecord:
    now = time.time()
    return JobRecord(id=job_id, model="tiny", created_at=now, updated_at=now + step, status=status, step=step,
                     params={})


def test_followers_get_every_record_of_their_job_only():
    async def scenario():
        updates = JobUpdates()
        with updates.follow("a") as first, updates.follow("a") as second, updates.follow("b") as other:
            for step in range(3):
                updates.publish(_record("a", step=step))
            updates.publish_deleted("a")
            assert [first.get_nowait() for _ in range(4)][:3] == [second.get_nowait() for _ in range(3)]
            assert second.get_nowait() is None  # the deletion reaches every follower
            assert first.empty() and other.empty()
            assert updates.followed_jobs == 2
        assert updates.followed_jobs == 0  # nothing kept for jobs nobody follows

    asyncio.run(scenario())


def test_a_slow_follower_loses_the_oldest_records_not_the_newest():
    async def scenario():
        updates = JobUpdates()
        with updates.follow("a") as queue:
            for step in range(FOLLOWER_BACKLOG + 5):
                updates.publish(_record("a", step=step))
            steps = [queue.get_nowait().step for _ in range(queue.qsize())]
        assert steps == list(range(5, FOLLOWER_BACKLOG + 5))

    asyncio.run(scenario())


def test_a_queued_record_wakes_the_claim_loop_and_others_do_not():
    async def scenario():
        updates = JobUpdates()
        updates.expect_claim()
        updates.publish(_record("a", JobStatus.IN_PROGRESS))
        updates.publish(_record("a", JobStatus.COMPLETED))
        assert await updates.wait_for_queued(0.05) is False
        waiter = asyncio.create_task(updates.wait_for_queued(3600))
        await asyncio.sleep(0)
        updates.publish(_record("b", JobStatus.QUEUED))
        assert await asyncio.wait_for(waiter, 10) is True
        # A job queued between expect_claim and the wait is not missed.
        updates.expect_claim()
        updates.publish(_record("c", JobStatus.QUEUED))
        assert await updates.wait_for_queued(3600) is True

    asyncio.run(scenario())
