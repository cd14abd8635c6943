"""Text encoding and first-frame conditioning through the app's conditioning caches.

Shared by the stage deployments of both layouts: a TextEncoder / ImageConditioner replica
runs the model on its own model thread; a colocated replica on its engine's step thread.
``run(function, *args)`` is how model work is run, awaited.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from engine.stage_types import EncodedText, GenerationRequest, ImageConditioning, TextEmbeddings, TextRequest
from serve.caches.client import ConditioningCache
from serve.caches.keys import first_frame_key, text_embedding_key
from serve.caches.tensor_values import tensor_nbytes

ModelRunner = Callable[..., Awaitable[Any]]


class CachedTextEncoding:
    def __init__(self, stage, cache: ConditioningCache | None, model_id: str, max_length: int, run: ModelRunner):
        self.stage, self.cache, self.model_id, self.max_length, self.run = stage, cache, model_id, max_length, run

    async def encode(self, request: TextRequest) -> TextEmbeddings:
        negative = None if request.negative_prompt is None else await self.embed(request.negative_prompt)
        return TextEmbeddings.of(await self.embed(request.prompt), negative)

    async def embed(self, text: str) -> EncodedText:
        def compute():
            return self.run(self.stage.encode_text, text)

        if self.cache is None:
            return await compute()
        key = text_embedding_key(self.model_id, text, self.max_length)
        encoded, _ = await self.cache.get_or_compute(key, compute, tensor_nbytes)
        return encoded


class CachedImageConditioning:
    def __init__(self, stage, cache: ConditioningCache | None, model_id: str, run: ModelRunner):
        self.stage, self.cache, self.model_id, self.run = stage, cache, model_id, run

    async def condition(self, request: GenerationRequest) -> ImageConditioning:
        def compute():
            return self.run(self.stage.condition, request)

        if self.cache is None:
            return await compute()
        # The image-to-video "prefill": the same first frame at the same size and length
        # conditions every request the same way, whatever its prompt or seed.
        key = first_frame_key(self.model_id, request.image, request.width, request.height, request.num_frames)
        conditioning, _ = await self.cache.get_or_compute(key, compute, tensor_nbytes)
        return conditioning
