from __future__ import annotations

import asyncio

from engine.stage_types import GenerationRequest, ImageConditioning
from engine.stages.image_conditioner import ImageConditioner
from serve.deployments.model_stage import load_stage_context


class ImageConditionerDeployment:
    def __init__(self, config: dict):
        _, spec, placement = load_stage_context(config, "image_encoder")
        self.stage = ImageConditioner(spec, placement)

    async def condition(self, request: GenerationRequest) -> ImageConditioning:
        return await asyncio.to_thread(self.stage.condition, request)
