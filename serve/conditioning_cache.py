"""A cluster-wide, byte-bounded LRU cache of conditioning tensors in Ray's object store.

Text embeddings (above all Wan's long default negative prompt) and image-to-video
first-frame conditioning repeat across many requests. One named actor per application,
``ConditioningCacheActor``, maps a content key to an ObjectRef that the actor itself put,
so every replica of every stage shares the entries and a value outlives the replica that
computed it. Replicas talk to it through ``ConditioningCache``.

Lifetime: the first replica that needs the cache creates the actor (``get_if_exists``),
``detached`` so it survives the replicas that come and go under autoscaling. It is not
removed with the Serve application: ``shutdown_cache(name, namespace)`` kills it and drops
every value (a replica that uses it afterwards starts a fresh, empty one). Because it
outlives deployments, keys carry ``KEY_SCHEMA``: bump it when a code change alters what a
key's value would be, so a redeployed app never reads the old values.

Values are read-only by contract: the same object is handed to every request. The client
stores tensors on the CPU (a CUDA tensor could not be unpickled in the GPU-less actor) and
returns CPU tensors. numpy arrays come back zero-copy as read-only views of shared memory,
so writing to one raises. torch tensors come back as a fresh copy per ``get`` (Ray pickles
them through torch's own reducer), so writing to one cannot reach the cached copy; where
the actor's process has ``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS`` set they would alias shared
memory instead, and ``get`` then clones them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import ray
import torch

logger = logging.getLogger(__name__)

# Part of every key: a cache outlives deployments, so a change to how a value is computed
# must change the keys (see the module docstring).
KEY_SCHEMA = "videoserve-conditioning/2"

# Ray's switch (read once per process) that makes ray.put hand torch tensors out zero-copy.
_ZERO_COPY_TORCH_ENV = "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"


def _check_max_bytes(max_bytes: Any) -> int:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        raise ValueError(f"max_bytes: must be a positive integer (got {max_bytes!r})")
    return max_bytes


def _check_nbytes(nbytes: Any) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes: must be a non-negative integer (got {nbytes!r})")
    return nbytes


def _check_key(key: Any) -> str:
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
        self._max_bytes = _check_max_bytes(max_bytes)
        self._entries: OrderedDict[str, tuple[ray.ObjectRef, int]] = OrderedDict()
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._rejected = 0

    async def put(self, key: str, value: Any, nbytes: int) -> bool:
        """Store ``value`` unless ``key`` is already there; True when it was stored.

        Keys name their content, so a second writer (two replicas computing the same key
        at once) holds an equal value: the first one stays. A value larger than the whole
        cache is refused rather than emptying the cache for it.
        """
        _check_key(key)
        _check_nbytes(nbytes)
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
        self.max_bytes = _check_max_bytes(max_bytes)
        self.namespace = namespace
        self._actor: Any = None
        self._copy_tensors_on_get = False

    async def get(self, key: str) -> Any | None:
        """The cached value, or None. Treat it as read-only (see the module docstring)."""
        _check_key(key)
        try:
            actor = await self._connected_actor()
            refs = await actor.get.remote(key)
            if refs is None:
                return None
            value = await refs[0]
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as error:
            self._forget_actor(error)
            return None
        return _map_tensors(value, torch.Tensor.clone) if self._copy_tensors_on_get else value

    async def put(self, key: str, value: Any, nbytes: int) -> None:
        """Cache ``value`` (charged ``nbytes`` against ``max_bytes``); no-op if ``key`` is there."""
        _check_key(key)
        _check_nbytes(nbytes)
        if value is None:
            raise ValueError("value: None cannot be cached (get() answers None for a miss)")
        stored = _map_tensors(value, _standalone_cpu_tensor)
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


def text_embedding_key(model_id: str, text: str, max_length: int) -> str:
    """Key of one text's embeddings.

    - ``model_id``: other weights give other embeddings. Pass whatever names the weights
      as loaded (a checkpoint path or preset name; add the dtype if replicas of one cache
      could load the encoder in different precisions).
    - ``text``: exactly as given; no normalisation, since the tokenizer sees every byte.
    - ``max_length``: embeddings are padded to it and texts truncated at it.
    """
    return _digest(
        "text-embedding",
        _nonempty_str("model_id", model_id),
        _str("text", text),
        _positive_int("max_length", max_length),
    )


def first_frame_key(model_id: str, image_bytes: bytes, width: int, height: int, num_frames: int) -> str:
    """Key of image-to-video conditioning for one first frame.

    - ``model_id``: the CLIP image encoder and the VAE that encode the frame.
    - ``image_bytes``: the uploaded file as sent (hashed); the same picture encoded
      differently is a miss, never a wrong hit.
    - ``width``, ``height``: the frame is resized to them before it is encoded.
    - ``num_frames``: sets the condition's latent time axis and its first-frame mask.
    """
    if not isinstance(image_bytes, (bytes, bytearray)) or not image_bytes:
        raise ValueError(f"image_bytes: must be non-empty bytes (got {type(image_bytes).__name__})")
    return _digest(
        "first-frame",
        _nonempty_str("model_id", model_id),
        hashlib.sha256(image_bytes).hexdigest(),
        _positive_int("width", width),
        _positive_int("height", height),
        _positive_int("num_frames", num_frames),
    )


def tensor_nbytes(value: Any) -> int:
    """Bytes of every torch tensor and numpy array in ``value``.

    Looks inside dataclasses, tuples, lists and dicts (values); anything else counts 0.
    An object reached twice counts once, as pickling stores it once.
    """
    seen: set[int] = set()
    total = 0
    for item in _walk(value):
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, np.ndarray):
            total += item.nbytes
    return total


def _digest(kind: str, *parts: str | int) -> str:
    # JSON of a flat list of strings and ints is unambiguous (quoted, escaped, ordered) and
    # the same on every Python; ASCII-only so lone surrogates in a text still encode.
    canonical = json.dumps([KEY_SCHEMA, kind, *parts], ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _str(field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{field}: must be a string (got {type(value).__name__})")
    return value


def _nonempty_str(field: str, value: Any) -> str:
    if not _str(field, value):
        raise ValueError(f"{field}: must not be empty")
    return value


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field}: must be a positive integer (got {value!r})")
    return value


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, torch.Tensor | np.ndarray):
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from _walk(getattr(value, field.name))
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


def _map_tensors(value: Any, transform: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` rebuilt with ``transform`` applied to each torch tensor (same containers)."""
    if isinstance(value, torch.Tensor):
        return transform(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            field.name: _map_tensors(getattr(value, field.name), transform)
            for field in dataclasses.fields(value)
            if field.init
        }
        return dataclasses.replace(value, **changes)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return type(value)(*(_map_tensors(item, transform) for item in value))
    if isinstance(value, tuple | list):
        return type(value)(_map_tensors(item, transform) for item in value)
    if isinstance(value, dict):
        return type(value)((key, _map_tensors(item, transform)) for key, item in value.items())
    return value


def _standalone_cpu_tensor(tensor: torch.Tensor) -> torch.Tensor:
    # Pickling a view ships its whole base storage; copying it out keeps what is stored
    # to the bytes tensor_nbytes charged for it.
    tensor = tensor.detach().to("cpu")
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor
