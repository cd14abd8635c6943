from __future__ import annotations

import asyncio

from engine.stage_types import GenerationRequest, TextEmbeddings
from engine.stages.text_encoder import TextEncoder
from serve.deployments.model_stage import load_stage_context


class TextEncoderDeployment:
    def __init__(self, config: dict):
        _, spec, placement = load_stage_context(config, "text_encoder")
        self.stage = TextEncoder(spec, placement)

    async def encode(self, request: GenerationRequest) -> TextEmbeddings:
        # Model work runs off the event loop so the replica keeps answering health checks.
        return await asyncio.to_thread(self.stage.encode, request)
