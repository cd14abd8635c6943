"""Job records as this ingress replica writes them, pushed to whoever waits on them.

Two waiters: the event streams (``GET /v1/videos/{id}/events``) that follow a job, and
the job runner's claim loop, which waits for a queued job. Without this they polled the
store (every stream four times a second, the claim loop twenty), and on a small machine
that polling took CPU from the model stages.

The push covers every write made through this replica (its runner and its API routes);
writes by other ingress replicas are still seen by polling the store, at a slower pace
(``FALLBACK_POLL_SECONDS`` for streams, ``jobs.poll_interval_seconds`` for claims).
Everything here runs on the replica's event loop.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from serve.jobs.store import JobRecord, JobStatus

# A stream still reads the store this often, for jobs another ingress replica runs.
FALLBACK_POLL_SECONDS = 1.0
# Updates a slow stream may fall behind by before the oldest are dropped: a stream
# always re-reads the latest state, so a dropped update costs one progress event.
FOLLOWER_BACKLOG = 256


class JobUpdates:
    def __init__(self) -> None:
        self._followers: dict[str, set[asyncio.Queue]] = defaultdict(set)
        self._queued = asyncio.Event()

    def publish(self, record: JobRecord) -> None:
        """``record`` as just written; a queued record also wakes the claim loop."""
        for queue in self._followers.get(record.id, ()):
            _put_dropping_oldest(queue, record)
        if record.status is JobStatus.QUEUED:
            self._queued.set()

    def publish_deleted(self, job_id: str) -> None:
        for queue in self._followers.get(job_id, ()):
            _put_dropping_oldest(queue, None)

    @contextmanager
    def follow(self, job_id: str) -> Iterator[asyncio.Queue]:
        """A queue of ``job_id``'s records (None once deleted) while the block runs."""
        queue: asyncio.Queue = asyncio.Queue(maxsize=FOLLOWER_BACKLOG)
        self._followers[job_id].add(queue)
        try:
            yield queue
        finally:
            followers = self._followers[job_id]
            followers.discard(queue)
            if not followers:
                del self._followers[job_id]

    @property
    def followed_jobs(self) -> int:
        return len(self._followers)

    def expect_claim(self) -> None:
        """Call before looking for a queued job, so one queued during the look still wakes the next wait."""
        self._queued.clear()

    async def wait_for_queued(self, timeout: float) -> bool:
        """True when a job was queued through this replica, False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._queued.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _put_dropping_oldest(queue: asyncio.Queue, item: JobRecord | None) -> None:
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)
