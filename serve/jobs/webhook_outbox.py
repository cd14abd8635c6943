"""Delivers the job store's webhook outbox: at least once, across restarts and replicas.

A job's end and its webhook are one store write (the runner puts a ``WebhookOutbox`` entry
in the record that ends the job), so a webhook is never lost between the two. Every ingress
replica runs one deliverer: it takes due entries from the store (``claim_webhook`` leases
one by moving its due time on), makes one attempt, and writes the outcome back: delivered,
due again after a backoff, or failed once ``webhooks.max_attempts`` ran out. A deliverer
that dies mid-attempt leaves the entry to come due again when its lease ends, with the same
``webhook-id``, so a receiver that got both copies deduplicates them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from serve.jobs.store import JobRecord, JobStore, WebhookOutbox
from serve.webhooks import WebhookSender, WebhookSettings, retry_delay_s, webhook_event_body

logger = logging.getLogger("videoserve.webhooks")


class WebhookOutboxDeliverer:
    def __init__(self, store: JobStore, sender: WebhookSender, settings: WebhookSettings, owner: str,
                 poll_interval_s: float = 1.0, concurrency: int = 8, clock: Callable[[], float] = time.time):
        self.store = store
        self.sender = sender
        self.settings = settings
        self.owner = owner
        self.poll_interval_s = poll_interval_s
        # An attempt can take the whole HTTP timeout; the lease outlasts it with room to write back.
        self.lease_s = settings.timeout_s * 2 + 5
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._wake = asyncio.Event()
        self._random = random.Random()
        self._task: asyncio.Task | None = None
        self._in_flight: set[asyncio.Task] = set()

    def wake(self) -> None:
        """A job with a webhook just ended here: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        tasks = [task for task in (self._task, *self._in_flight) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                job = await asyncio.to_thread(self.store.claim_webhook, self.owner, self.lease_s, self._clock())
            except Exception:  # a store outage must not end deliveries for good
                logger.exception("taking a webhook from the outbox failed")
                job = None
            if job is None:
                self._slots.release()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)
                except TimeoutError:
                    pass
                continue
            task = asyncio.create_task(self._deliver(job))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, job: JobRecord) -> None:
        try:
            entry = job.webhook_outbox
            assert entry is not None and job.webhook_url is not None
            body = webhook_event_body(entry.event_id, entry.type, job.id, entry.created_at)
            attempt = entry.attempts + 1
            last = attempt >= self.settings.max_attempts
            result = await self.sender.attempt(job.webhook_url, entry.message_id, body, last_attempt=last)
            now = self._clock()
            if result.outcome == "delivered":
                settled = entry.model_copy(update={"state": "delivered", "attempts": attempt, "last_problem": None})
            elif result.outcome == "failed":
                logger.warning("webhook %s for %s failed after %d attempt(s): %s", entry.message_id, job.id,
                               attempt, result.problem)
                settled = entry.model_copy(update={"state": "failed", "attempts": attempt,
                                                   "last_problem": result.problem})
            else:
                delay = retry_delay_s(self.settings, attempt, result.retry_after_s, self._random.random())
                settled = entry.model_copy(update={"attempts": attempt, "next_attempt_at": now + delay,
                                                   "last_problem": result.problem})
            await asyncio.to_thread(self._write_back, job.id, entry, settled)
        except Exception:
            # The entry is still leased: it comes due again when the lease ends.
            logger.exception("delivering the webhook of %s failed", job.id)
        finally:
            self._slots.release()

    def _write_back(self, job_id: str, taken: WebhookOutbox, settled: WebhookOutbox) -> None:
        current = self.store.get(job_id)
        if current is None or current.webhook_outbox is None or current.webhook_outbox.event_id != taken.event_id:
            return  # deleted meanwhile
        self.store.update(job_id, webhook_outbox=settled)
