"""A replica's handle on the application's cache actor, and the call that removes it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
import torch

from serve.caches.actor import ConditioningCacheActor, check_key, check_max_bytes, check_nbytes
from serve.caches.tensor_values import map_tensors, standalone_cpu_tensor

logger = logging.getLogger(__name__)


class ConditioningCache:
    """A replica's handle on the application's cache.

    The cache is an optimisation, so a dead actor never fails a request: ``get`` answers
    None, ``put`` drops the value, and the next call finds or starts a new actor. The
    first client to start the actor sets its ``max_bytes``; ``stats()`` reports it.
    """

    def __init__(self, name: str, max_bytes: int, namespace: str | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: must be a non-empty string (got {name!r})")
        self.name = name
        self.max_bytes = check_max_bytes(max_bytes)
        self.namespace = namespace
        self._actor: Any = None
        self._copy_tensors_on_get = False

    async def get(self, key: str) -> Any | None:
        """The cached value, or None. Treat it as read-only (see the module docstring)."""
        check_key(key)
        try:
            actor = await self._connected_actor()
            refs = await actor.get.remote(key)
            if refs is None:
                return None
            value = await refs[0]
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
            self._forget_actor(error)
            return None
        return map_tensors(value, torch.Tensor.clone) if self._copy_tensors_on_get else value

    async def put(self, key: str, value: Any, nbytes: int) -> None:
        """Cache ``value`` (charged ``nbytes`` against ``max_bytes``); no-op if ``key`` is there."""
        check_key(key)
        check_nbytes(nbytes)
        if value is None:
            raise ValueError("value: None cannot be cached (get() answers None for a miss)")
        stored = map_tensors(value, standalone_cpu_tensor)
        try:
            actor = await self._connected_actor()
            await actor.put.remote(key, stored, nbytes)
        except ray.exceptions.RayActorError as error:
            self._forget_actor(error)

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[Any]], nbytes: Callable[[Any], int]
    ) -> tuple[Any, bool]:
        """(value, hit). Two replicas missing the same key at once both compute; the first put stays.

        On a miss the value is ``compute``'s own object (on whatever device it made it);
        on a hit it is the cached CPU copy.
        """
        cached = await self.get(key)
        if cached is not None:
            return cached, True
        value = await compute()
        await self.put(key, value, nbytes(value))
        return value, False

    async def stats(self) -> dict[str, int]:
        """hits, misses, entries, bytes, max_bytes, evictions, rejected (larger than max_bytes)."""
        return await self._call("stats")

    async def clear(self) -> None:
        await self._call("clear")

    async def _call(self, method: str) -> Any:
        # Unlike get/put these report the cache itself, so a dead actor is an error here;
        # the handle is still dropped so that the next call finds or starts a new one.
        try:
            actor = await self._connected_actor()
            return await getattr(actor, method).remote()
        except ray.exceptions.RayActorError:
            self._actor = None
            raise

    async def _connected_actor(self) -> Any:
        if self._actor is None:
            # Finding or creating a named actor is a blocking call to Ray's control store.
            actor = await asyncio.to_thread(self._find_or_start_actor)
            self._copy_tensors_on_get = await actor.hands_out_aliased_tensors.remote()
            self._actor = actor
        return self._actor

    def _find_or_start_actor(self) -> Any:
        return ConditioningCacheActor.options(
            name=self.name, namespace=self.namespace, get_if_exists=True, lifetime="detached"
        ).remote(self.max_bytes)

    def _forget_actor(self, error: Exception) -> None:
        logger.warning("conditioning cache %r unavailable, treating as a miss: %s", self.name, error)
        self._actor = None


def shutdown_cache(name: str, namespace: str | None = None, timeout_seconds: float = 30.0) -> bool:
    """Kill the cache actor ``name`` and free its values; False when there was none.

    Returns once the name is free (ray.kill alone returns before that), so a cache started
    right after it is a new, empty one rather than a handle on the dying actor.
    """
    try:
        actor = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.kill(actor, no_restart=True)
    deadline = time.monotonic() + timeout_seconds
    while True:
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"conditioning cache {name!r} still registered {timeout_seconds} s after ray.kill")
        time.sleep(0.05)
