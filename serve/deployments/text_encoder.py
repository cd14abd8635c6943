from __future__ import annotations

from engine.stage_types import EncodedText, TextEmbeddings, TextRequest
from engine.stages.text_encoder import TextEncoder
from serve.caches.keys import text_embedding_key
from serve.caches.tensor_values import tensor_nbytes
from serve.app_config import AppConfig
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.deployments.stage_caches import TEXT_CACHE, model_identity, open_stage_cache


class TextEncoderDeployment:
    """One text encoder, for every model of the app whose text encoder it is (serve/model_stages.py)."""

    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, spec, placement = load_stage_context(config, "text_encoder", model)
        self.stage = TextEncoder(spec, placement)
        self.model_thread = ModelThread(app_config.torch_threads)
        self.cache = open_stage_cache(app_config, TEXT_CACHE)
        self.model_id = model_identity(spec, placement, "TextEncoder")
        self.max_length = spec.geometry.text_max_length

    async def encode(self, request: TextRequest) -> TextEmbeddings:
        negative = None if request.negative_prompt is None else await self.embed(request.negative_prompt)
        return TextEmbeddings.of(await self.embed(request.prompt), negative)

    async def embed(self, text: str) -> EncodedText:
        # Model work runs off the event loop so the replica keeps answering health checks.
        def compute():
            return self.model_thread.run(self.stage.encode_text, text)

        if self.cache is None:
            return await compute()
        key = text_embedding_key(self.model_id, text, self.max_length)
        encoded, _ = await self.cache.get_or_compute(key, compute, tensor_nbytes)
        return encoded
