"""VAE decodes batched as they queue: the ones that arrive while the decoder is busy go together next.

No decode waits on purpose: the first runs at once, and what arrives during it (the DiT
finishes requests in bursts when they share steps) goes through the VAE in one call when
it is free (``VaeDecoder.decode_many``), up to ``max_batch_size``, in arrival order. A
failing batch is retried one decode at a time, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engine.stage_types import Frames, Latents

DecodeMany = Callable[[Sequence[tuple[Latents, int]]], list[Frames]]
RunOnModelThread = Callable[..., Awaitable[Any]]


class DecodeBatcher:
    def __init__(self, decode_many: DecodeMany, run: RunOnModelThread, max_batch_size: int):
        self._decode_many = decode_many
        self._run = run  # runs a function on the thread that owns the decoder
        self.max_batch_size = max_batch_size  # validated at the edge (VaeDecoderConfig, ge=1)
        self._waiting: list[tuple[Latents, int, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None
        # Calls to the VAE and the decodes they did: decodes / calls is the mean batch size.
        self.calls = 0
        self.decodes = 0

    async def decode(self, latents: Latents, fps: int) -> Frames:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((latents, fps, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._waiting:
            batch = [item for item in self._waiting[:self.max_batch_size] if not item[2].done()]  # done: cancelled
            del self._waiting[:self.max_batch_size]
            if batch:
                await self._decode(batch)

    async def _decode(self, batch: list[tuple[Latents, int, asyncio.Future]]) -> None:
        try:
            self.calls += 1
            self.decodes += len(batch)
            results = await self._run(self._decode_many, [(latents, fps) for latents, fps, _ in batch])
        except Exception as error:
            if len(batch) == 1:
                _settle(batch[0][2], error=error)
                return
            for item in batch:  # which one failed? each on its own
                await self._decode([item])
            return
        for (_, _, future), frames in zip(batch, results):
            _settle(future, result=frames)


def _settle(future: asyncio.Future, *, result: Frames | None = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
