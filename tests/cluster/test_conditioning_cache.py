"""The cluster-wide conditioning cache, on the session's real local Ray cluster."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections import namedtuple

import numpy as np
import psutil
import pytest
import ray
import torch

from engine.stage_types import ImageConditioning, TextEmbeddings
from serve.caches.actor import ConditioningCacheActor
from serve.caches.client import ConditioningCache, shutdown_cache
from serve.caches.keys import first_frame_key, text_embedding_key
from serve.caches.tensor_values import tensor_nbytes

MiB = 1 << 20


def seeded(seed: int, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture
def cache_name(ray_cluster):
    name = f"conditioning-test-{uuid.uuid4().hex[:12]}"
    yield name
    shutdown_cache(name)


@ray.remote(num_cpus=0)
class CachePutter:
    """Another process that computes a value, caches it, and then dies."""

    async def put(self, name: str, key: str, seed: int) -> None:
        value = TextEmbeddings(prompt_embeds=seeded(seed, 1, 16, 8), negative_prompt_embeds=seeded(seed + 1, 1, 16, 8))
        await ConditioningCache(name, max_bytes=MiB).put(key, value, tensor_nbytes(value))

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        return "alive"


def test_round_trip_of_a_tensor_and_of_stage_dataclasses(cache_name):
    tensor = seeded(0, 1, 32, 16, dtype=torch.bfloat16)
    text = TextEmbeddings(prompt_embeds=seeded(1, 1, 32, 16), negative_prompt_embeds=None)
    image = ImageConditioning(image_embeds=seeded(2, 1, 4, 8), condition=seeded(3, 1, 8, 2, 4, 4))

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=MiB)
        assert await cache.get("tensor") is None
        for key, value in (("tensor", tensor), ("text", text), ("image", image)):
            await cache.put(key, value, tensor_nbytes(value))
        return [await cache.get(key) for key in ("tensor", "text", "image")], await cache.stats()

    (got_tensor, got_text, got_image), stats = asyncio.run(run())
    assert got_tensor.dtype == torch.bfloat16 and torch.equal(got_tensor, tensor)
    assert type(got_text) is TextEmbeddings and got_text.negative_prompt_embeds is None
    assert torch.equal(got_text.prompt_embeds, text.prompt_embeds)
    assert type(got_image) is ImageConditioning
    assert torch.equal(got_image.image_embeds, image.image_embeds)
    assert torch.equal(got_image.condition, image.condition)
    expected_bytes = tensor_nbytes(tensor) + tensor_nbytes(text) + tensor_nbytes(image)
    assert stats | {"max_bytes": 0} == {
        "hits": 3, "misses": 1, "entries": 3, "bytes": expected_bytes, "max_bytes": 0, "evictions": 0, "rejected": 0,
    }
    assert stats["max_bytes"] == MiB


def test_lru_eviction_by_bytes_and_exact_stats(cache_name):
    values = {key: seeded(seed, 4) for seed, key in enumerate("abcde")}

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=300)
        for key in "abc":
            await cache.put(key, values[key], 100)
        full = await cache.stats()
        assert await cache.get("a") is not None  # "a" is now the most recently used
        await cache.put("d", values["d"], 100)  # over 300 bytes: the least recently used ("b") goes
        present = {key: await cache.get(key) for key in "abcd"}
        await cache.put("c", values["e"], 100)  # the key is there: the first value stays
        c_again = await cache.get("c")
        await cache.put("huge", values["e"], 301)  # larger than the whole cache: refused
        huge = await cache.get("huge")
        final = await cache.stats()
        await cache.clear()
        return full, present, c_again, huge, final, await cache.stats(), await cache.get("a")

    full, present, c_again, huge, final, cleared, after_clear = asyncio.run(run())
    assert full == {"hits": 0, "misses": 0, "entries": 3, "bytes": 300, "max_bytes": 300, "evictions": 0,
                    "rejected": 0}
    assert present["b"] is None
    for key in "acd":
        assert torch.equal(present[key], values[key])
    assert torch.equal(c_again, values["c"])
    assert huge is None
    # hits: a, then a, c, d, then c; misses: b, then huge.
    assert final == {"hits": 5, "misses": 2, "entries": 3, "bytes": 300, "max_bytes": 300, "evictions": 1,
                     "rejected": 1}
    assert cleared | {"hits": 0, "misses": 0} == {"hits": 0, "misses": 0, "entries": 0, "bytes": 0,
                                                   "max_bytes": 300, "evictions": 1, "rejected": 1}
    assert after_clear is None


def test_values_outlive_the_process_that_put_them(cache_name):
    putter = CachePutter.remote()
    ray.get(putter.put.remote(cache_name, "embeds", seed=7))
    pid = ray.get(putter.pid.remote())
    ray.kill(putter, no_restart=True)
    # ray.kill only asks for the kill: wait for the process itself to be gone, or a call
    # sent right after it may still be answered by the dying actor.
    try:
        psutil.Process(pid).wait(timeout=60)  # raises TimeoutExpired if the actor outlives the kill
    except psutil.NoSuchProcess:
        pass
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(putter.ping.remote())

    got = asyncio.run(ConditioningCache(cache_name, max_bytes=MiB).get("embeds"))
    assert torch.equal(got.prompt_embeds, seeded(7, 1, 16, 8))
    assert torch.equal(got.negative_prompt_embeds, seeded(8, 1, 16, 8))


def test_get_or_compute_computes_each_key_once(cache_name):
    calls: list[str] = []
    sized: list[torch.Tensor] = []

    def computing(key: str, seed: int):
        async def compute():
            calls.append(key)
            return seeded(seed, 2, 3)
        return compute

    def nbytes(value):
        sized.append(value)
        return tensor_nbytes(value)

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=MiB)
        first = await cache.get_or_compute("x", computing("x", 1), nbytes)
        second = await cache.get_or_compute("x", computing("x", 1), nbytes)
        other = await cache.get_or_compute("y", computing("y", 2), nbytes)
        return first, second, other, await cache.stats()

    (first, first_hit), (second, second_hit), (other, other_hit), stats = asyncio.run(run())
    assert (first_hit, second_hit, other_hit) == (False, True, False)
    assert calls == ["x", "y"]
    assert torch.equal(first, seeded(1, 2, 3)) and torch.equal(second, first) and torch.equal(other, seeded(2, 2, 3))
    assert len(sized) == 2 and torch.equal(sized[0], first)
    assert (stats["entries"], stats["bytes"]) == (2, 2 * 2 * 3 * 4)


def test_two_concurrent_misses_of_one_key_both_compute_and_one_entry_stays(cache_name):
    both_computing = asyncio.Event()
    computing: list[int] = []

    async def compute():
        # Neither finishes until both have started, so both must have missed.
        computing.append(1)
        if len(computing) == 2:
            both_computing.set()
        await both_computing.wait()
        return seeded(5, 8)

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=MiB)
        results = await asyncio.wait_for(
            asyncio.gather(*(cache.get_or_compute("k", compute, tensor_nbytes) for _ in range(2))), 120
        )
        return results, await cache.get_or_compute("k", compute, tensor_nbytes), await cache.stats()

    results, (cached, hit), stats = asyncio.run(run())
    assert [was_hit for _, was_hit in results] == [False, False]
    assert hit is True and torch.equal(cached, seeded(5, 8)) and len(computing) == 2
    assert (stats["entries"], stats["bytes"]) == (1, 32)


def test_mutating_a_returned_value_leaves_the_cached_one_alone(cache_name):
    tensor = seeded(11, 3, 5)
    array = np.arange(6, dtype=np.float32)

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=MiB)
        await cache.put("tensor", tensor, tensor_nbytes(tensor))
        await cache.put("array", array, tensor_nbytes(array))
        handed_out = await cache.get("tensor")
        handed_out.add_(100.0)
        return handed_out, await cache.get("tensor"), await cache.get("array")

    mutated, again, got_array = asyncio.run(run())
    assert torch.equal(mutated, tensor + 100.0)
    assert torch.equal(again, tensor)
    # numpy arrays come back as read-only views of the shared object: writing refuses.
    np.testing.assert_array_equal(got_array, array)
    with pytest.raises(ValueError, match="read-only"):
        got_array[0] = 42.0


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_tensors_stay_private_when_ray_hands_them_out_zero_copy(cache_name):
    tensor = seeded(12, 64, 64)
    # The actor started by hand, as the first replica would, but with Ray's zero-copy
    # tensor mode on in its process: its ray.put then gives readers views of shared memory.
    actor = ConditioningCacheActor.options(
        name=cache_name, lifetime="detached",
        runtime_env={"env_vars": {"RAY_ENABLE_ZERO_COPY_TORCH_TENSORS": "1"}},
    ).remote(MiB)
    assert ray.get(actor.hands_out_aliased_tensors.remote()) is True

    async def run():
        cache = ConditioningCache(cache_name, max_bytes=MiB)
        await cache.put("tensor", tensor, tensor_nbytes(tensor))
        handed_out = await cache.get("tensor")
        handed_out.mul_(-1.0)
        return handed_out, await cache.get("tensor")

    mutated, again = asyncio.run(run())
    assert torch.equal(mutated, -tensor)
    assert torch.equal(again, tensor)


def test_a_killed_cache_is_a_miss_then_starts_afresh_in_its_namespace(cache_name):
    namespace = f"conditioning-test-ns-{uuid.uuid4().hex[:8]}"
    value = seeded(13, 4)

    async def before():
        cache = ConditioningCache(cache_name, max_bytes=MiB, namespace=namespace)
        await cache.put("k", value, 16)
        return cache, await cache.get("k")

    cache, stored = asyncio.run(before())
    assert torch.equal(stored, value)
    assert shutdown_cache(cache_name) is False  # not in the job's own namespace
    assert shutdown_cache(cache_name, namespace) is True

    async def after():
        lost = await cache.get("k")
        await cache.put("k2", value, 16)
        return lost, await cache.get("k2"), await cache.stats()

    lost, fresh, stats = asyncio.run(after())
    assert lost is None
    assert torch.equal(fresh, value)
    assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 1, 0)
    assert shutdown_cache(cache_name, namespace) is True
    assert shutdown_cache(cache_name, namespace) is False


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="name"):
        ConditioningCache("", max_bytes=MiB)
    with pytest.raises(ValueError, match="max_bytes"):
        ConditioningCache("c", max_bytes=0)
    cache = ConditioningCache("never-started", max_bytes=MiB)
    with pytest.raises(ValueError, match="nbytes"):
        asyncio.run(cache.put("k", torch.zeros(1), -1))
    with pytest.raises(ValueError, match="value"):
        asyncio.run(cache.put("k", None, 0))
    with pytest.raises(ValueError, match="key"):
        asyncio.run(cache.get(""))


TEXT_ARGS = {"model_id": "tiny", "text": "a red car at night", "max_length": 512}
FRAME_ARGS = {"model_id": "tiny-i2v", "image_bytes": b"\x89PNG first frame", "width": 64, "height": 48,
              "num_frames": 17}


@pytest.mark.parametrize(
    "change",
    [{"model_id": "wan2.1-t2v-1.3b"}, {"text": "a red car at night "}, {"text": ""}, {"max_length": 226}],
)
def test_text_embedding_key_changes_with_every_input(change):
    base = text_embedding_key(**TEXT_ARGS)
    assert re.fullmatch("[0-9a-f]{64}", base)
    assert text_embedding_key(**dict(TEXT_ARGS)) == base
    assert text_embedding_key(**(TEXT_ARGS | change)) != base


@pytest.mark.parametrize(
    "change",
    [{"model_id": "wan2.1-i2v-14b-480p"}, {"image_bytes": b"\x89PNG first framf"}, {"width": 48, "height": 64},
     {"width": 80}, {"height": 64}, {"num_frames": 21}],
)
def test_first_frame_key_changes_with_every_input(change):
    base = first_frame_key(**FRAME_ARGS)
    assert re.fullmatch("[0-9a-f]{64}", base)
    assert first_frame_key(**dict(FRAME_ARGS)) == base
    assert first_frame_key(**(FRAME_ARGS | change)) != base


def test_keys_refuse_bad_inputs_by_name():
    with pytest.raises(ValueError, match="max_length"):
        text_embedding_key("tiny", "x", 0)
    with pytest.raises(ValueError, match="model_id"):
        text_embedding_key("", "x", 8)
    with pytest.raises(ValueError, match="text"):
        text_embedding_key("tiny", b"x", 8)
    with pytest.raises(ValueError, match="width"):
        first_frame_key("tiny-i2v", b"img", 0, 48, 17)
    with pytest.raises(ValueError, match="num_frames"):
        first_frame_key("tiny-i2v", b"img", 64, 48, True)
    with pytest.raises(ValueError, match="image_bytes"):
        first_frame_key("tiny-i2v", b"", 64, 48, 17)


def test_tensor_nbytes_of_nested_values():
    Pair = namedtuple("Pair", "left right")
    shared = torch.zeros(10, dtype=torch.float32)  # 40 bytes
    value = {
        "text": TextEmbeddings(prompt_embeds=torch.zeros(1, 4, 8, dtype=torch.bfloat16), negative_prompt_embeds=None),
        "list": [torch.zeros(3, dtype=torch.int64), np.zeros(5, dtype=np.int16), "label", 7],
        "tuple": (shared, Pair(shared, torch.zeros(2, 2, dtype=torch.float64))),
    }
    assert tensor_nbytes(value) == 64 + 24 + 10 + 40 + 32
    assert tensor_nbytes(torch.arange(100, dtype=torch.float32)[:10]) == 40
    assert tensor_nbytes(None) == 0 and tensor_nbytes("text") == 0
