"""The cache itself: one named, detached actor per application (see the package docstring)."""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import ray

# Ray's switch (read once per process) that makes ray.put hand torch tensors out zero-copy.
_ZERO_COPY_TORCH_ENV = "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"


def check_max_bytes(max_bytes: Any) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes: must be a positive integer (got {max_bytes!r})")
    return max_bytes


def check_nbytes(nbytes: Any) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes: must be a non-negative integer (got {nbytes!r})")
    return nbytes


def check_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"key: must be a non-empty string (got {key!r})")
    return key


@ray.remote(num_cpus=0)
class ConditioningCacheActor:
    """key -> (ObjectRef, nbytes) in least-recently-used order, bounded by total nbytes.

    Every method is a coroutine without an ``await``, so the actor's event loop runs
    calls concurrently (a get never queues behind another call's argument transfer) while
    each one's bookkeeping stays atomic without a lock.
    """

    def __init__(self, max_bytes: int):
        self._max_bytes = check_max_bytes(max_bytes)
        self._entries: OrderedDict[str, tuple[ray.ObjectRef, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._rejected = 0

    async def put(self, key: str, value: Any, nbytes: int) -> bool:
        """Store ``value`` unless ``key`` is already there; True when it was stored.

        Keys name their content, so a second writer (two replicas computing the same key
        at once) holds an equal value: the first one stays. A value larger than the whole
        cache is refused rather than emptying the cache for it.
        """
        check_key(key)
        check_nbytes(nbytes)
        if key in self._entries:
            self._entries.move_to_end(key)
            return False
        if nbytes > self._max_bytes:
            self._rejected += 1
            return False
        while self._bytes + nbytes > self._max_bytes:
            _, (_, evicted_bytes) = self._entries.popitem(last=False)
            self._bytes -= evicted_bytes
            self._evictions += 1
        # Put here, not by the caller: the actor then owns the object, so it survives the
        # replica that computed it. Dropping the ref on eviction frees it once no reader
        # still borrows it.
        self._entries[key] = (ray.put(value), nbytes)
        self._bytes += nbytes
        return True

    async def get(self, key: str) -> list[ray.ObjectRef] | None:
        """The value's ref in a list (a bare returned ref would be resolved on the way)."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        self._hits += 1
        self._entries.move_to_end(key)
        return [entry[0]]

    async def stats(self) -> dict[str, int]:
        return {
            "hits": self._hits,
            "misses": self._misses,
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self._max_bytes,
            "evictions": self._evictions,
            "rejected": self._rejected,
        }

    async def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def hands_out_aliased_tensors(self) -> bool:
        """Whether this process's ray.put makes readers' tensors views of shared memory."""
        return os.environ.get(_ZERO_COPY_TORCH_ENV, "").lower() in ("1", "true")
