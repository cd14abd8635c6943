"""Deletes ended jobs once their retention is over: the record (``expires_at``) and its files.

Every ingress replica runs one; the store's ``sweep_expired`` deletes each record once, so
replicas sweeping at the same time never both delete (or both miss) a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serve.artifact_store import ArtifactStore
from serve.jobs.store import JobStore

logger = logging.getLogger("videoserve.jobs")


class RetentionSweeper:
    def __init__(self, store: JobStore, artifacts: ArtifactStore, interval_s: float,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.artifacts = artifacts
        self.interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task | None = None

    def sweep_once(self) -> list[str]:
        """Delete what has expired by now; the ids deleted (blocking: store and disk)."""
        swept = []
        while batch := self.store.sweep_expired(self._clock()):
            for job_id in batch:
                self.artifacts.delete(job_id)
            swept += batch
        return swept

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                swept = await asyncio.to_thread(self.sweep_once)
                if swept:
                    logger.info("retention: deleted %d expired job(s)", len(swept))
            except Exception:
                logger.exception("retention sweep failed")
            await asyncio.sleep(self.interval_s)
