from __future__ import annotations

from engine.stage_types import EncodedText, TextEmbeddings, TextRequest
from engine.stages.text_encoder import TextEncoder
from serve.app_config import AppConfig
from serve.deployments.cached_conditioning import CachedTextEncoding
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.deployments.stage_caches import TEXT_CACHE, model_identity, open_stage_cache


class TextEncoderDeployment:
    """One text encoder, for every model of the app whose text encoder it is (serve/model_stages.py)."""

    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, spec, placement = load_stage_context(config, "text_encoder", model)
        # Model work runs off the event loop so the replica keeps answering health checks.
        self.model_thread = ModelThread(app_config.torch_threads)
        self.text = CachedTextEncoding(TextEncoder(spec, placement), open_stage_cache(app_config, TEXT_CACHE),
                                       model_identity(spec, placement, "TextEncoder"), spec.geometry.text_max_length,
                                       self.model_thread.run)

    async def encode(self, request: TextRequest) -> TextEmbeddings:
        return await self.text.encode(request)

    async def embed(self, text: str) -> EncodedText:
        return await self.text.embed(text)
