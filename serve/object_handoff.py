"""Passing a stage's output to the next stage by reference, through Ray's object store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray


@dataclass(frozen=True)
class ObjectHandoff:
    """An ObjectRef in a wrapper, so that the orchestrator that relays it never fetches it.

    The object is owned by the process that put it (the producing replica): if that
    replica dies first, ``fetch`` fails and the job is retried from the start.
    """

    ref: ray.ObjectRef

    @classmethod
    def put(cls, value: Any) -> ObjectHandoff:
        return cls(ray.put(value))

    async def fetch(self) -> Any:
        return await self.ref
