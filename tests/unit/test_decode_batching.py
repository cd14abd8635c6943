"""VAE decodes batched as they queue: the same frames as one decode at a time, fewer VAE calls.

The batcher's scheduling is tested with a plain function standing in for the VAE (what it
schedules, not what it computes, is under test there); the frames, with the real decoder.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from engine.stage_types import Frames, Latents
from serve.app_config import AppConfig
from serve.deployments.decode_batching import DecodeBatcher


def _latents(request_id: str, frames: int = 2, seed: int = 0, spec=None) -> Latents:
    shape = (1, 16, frames, 4, 4) if spec is None else spec.geometry.latent_shape(
        spec.defaults.num_frames if frames is None else frames, spec.defaults.height, spec.defaults.width)
    return Latents(request_id=request_id, latents=torch.randn(shape, generator=torch.Generator().manual_seed(seed)))


def test_decode_many_equals_one_decode_at_a_time_in_order(preset_specs):
    from engine.stages.loading import load_vae_decoder

    spec = preset_specs["tiny"]
    decoder = load_vae_decoder(spec)
    frame_counts = (spec.defaults.num_frames, spec.defaults.num_frames + 4 * spec.geometry.temporal_factor)
    # Two shapes interleaved: each shape's decodes go through the VAE together, answers stay in order.
    requests = [(_latents(f"r{index}", frame_counts[index % 2], seed=index, spec=spec), 8 + index) for index in range(5)]
    together = decoder.decode_many(requests)
    assert [frames.request_id for frames in together] == [f"r{index}" for index in range(5)]
    assert [frames.fps for frames in together] == [8, 9, 10, 11, 12]
    for (latents, fps), batched in zip(requests, together):
        alone = decoder.decode(latents, fps)
        assert batched.frames.shape == alone.frames.shape
        assert np.abs(batched.frames.astype(int) - alone.frames.astype(int)).max() <= 1


class _RecordingDecoder:
    """Stands in for VaeDecoder.decode_many: records each call's request ids, and can hold a call."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.failing: set[str] = set()

    def decode_many(self, requests):
        self.release.wait(timeout=30)
        ids = [latents.request_id for latents, _ in requests]
        self.calls.append(ids)
        if self.failing & set(ids):
            raise ValueError(f"cannot decode {sorted(self.failing & set(ids))}")
        return [Frames(request_id=latents.request_id, frames=np.zeros((1, 2, 2, 3), np.uint8), fps=fps)
                for latents, fps in requests]


def _batcher(decoder: _RecordingDecoder, max_batch_size: int) -> DecodeBatcher:
    executor = ThreadPoolExecutor(max_workers=1)

    async def run(function, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    return DecodeBatcher(decoder.decode_many, run, max_batch_size)


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0)


def test_decodes_that_arrive_while_the_decoder_is_busy_go_together_up_to_the_cap():
    decoder = _RecordingDecoder()
    batcher = _batcher(decoder, max_batch_size=3)

    async def scenario():
        decoder.release.clear()
        first = asyncio.ensure_future(batcher.decode(_latents("a"), 8))
        await _until(lambda: batcher.calls == 1)  # "a" is in the VAE, held there
        rest = [asyncio.ensure_future(batcher.decode(_latents(name), 8)) for name in "bcdef"]
        await asyncio.sleep(0)
        decoder.release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(scenario())
    assert [frames.request_id for frames in results] == list("abcdef")
    assert decoder.calls == [["a"], ["b", "c", "d"], ["e", "f"]]  # the first never waits; then FIFO, capped
    assert (batcher.calls, batcher.decodes) == (3, 6)


def test_a_failing_decode_fails_alone_and_a_cancelled_one_is_skipped():
    decoder = _RecordingDecoder()
    decoder.failing = {"bad"}
    batcher = _batcher(decoder, max_batch_size=4)

    async def scenario():
        decoder.release.clear()
        first = asyncio.ensure_future(batcher.decode(_latents("a"), 8))
        await _until(lambda: batcher.calls == 1)
        good = asyncio.ensure_future(batcher.decode(_latents("good"), 8))
        bad = asyncio.ensure_future(batcher.decode(_latents("bad"), 8))
        gone = asyncio.ensure_future(batcher.decode(_latents("gone"), 8))
        await asyncio.sleep(0)
        gone.cancel()
        decoder.release.set()
        return await asyncio.gather(first, good, bad, return_exceptions=True)

    first, good, bad = asyncio.run(scenario())
    assert first.request_id == "a" and good.request_id == "good"
    assert isinstance(bad, ValueError) and "bad" in str(bad)
    assert decoder.calls == [["a"], ["good", "bad"], ["good"], ["bad"]]  # retried one by one; "gone" never decoded


def test_max_batch_size_defaults_by_device_and_refuses_zero():
    assert AppConfig().vae_decoder.resolved_max_batch_size("cpu") == 4
    assert AppConfig().vae_decoder.resolved_max_batch_size("cuda") == 1
    assert AppConfig.model_validate({"vae_decoder": {"max_batch_size": 2}}).vae_decoder.resolved_max_batch_size("cuda") == 2
    with pytest.raises(ValueError, match="max_batch_size"):
        AppConfig.model_validate({"vae_decoder": {"max_batch_size": 0}})
