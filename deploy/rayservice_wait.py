"""Polling a RayService until it is ready, has failed, or the time is up."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from deploy.rayservice_status import Phase, RayServiceState, Readiness, assess


@dataclass(frozen=True)
class WaitOutcome:
    readiness: Readiness  # the last one seen
    state: RayServiceState
    timed_out: bool


def wait_until_ready(
    fetch: Callable[[], RayServiceState],
    timeout: float,
    interval: float,
    on_change: Callable[[Readiness], None] = lambda readiness: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitOutcome:
    """Poll ``fetch`` every ``interval`` s until READY or FAILED, or ``timeout`` s have passed.

    An UNHEALTHY application is polled on (Serve may recover it); the outcome at the deadline
    says whether it still was.
    """
    deadline = clock() + timeout
    last_summary = None
    while True:
        state = fetch()
        readiness = assess(state)
        if readiness.summary != last_summary:
            on_change(readiness)
            last_summary = readiness.summary
        if readiness.phase in (Phase.READY, Phase.FAILED):
            return WaitOutcome(readiness, state, timed_out=False)
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitOutcome(readiness, state, timed_out=True)
        sleep(min(interval, remaining))
