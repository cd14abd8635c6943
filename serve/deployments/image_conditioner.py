from __future__ import annotations

from engine.stage_types import GenerationRequest, ImageConditioning
from engine.stages.loading import load_image_conditioner
from serve.app_config import AppConfig
from serve.deployments.cached_conditioning import CachedImageConditioning
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.deployments.stage_caches import FIRST_FRAME_CACHE, model_identity, open_stage_cache


class ImageConditionerDeployment:
    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, spec, placement = load_stage_context(config, "image_encoder", model)
        self.model_thread = ModelThread(app_config.torch_threads)
        self.image = CachedImageConditioning(load_image_conditioner(spec, placement),
                                             open_stage_cache(app_config, FIRST_FRAME_CACHE),
                                             model_identity(spec, placement, "ImageConditioner"), self.model_thread.run)

    async def condition(self, request: GenerationRequest) -> ImageConditioning:
        return await self.image.condition(request)
