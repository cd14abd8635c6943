from __future__ import annotations

from engine.stage_types import GenerationRequest, ImageConditioning
from engine.stages.loading import load_image_conditioner
from serve.caches.keys import first_frame_key
from serve.caches.tensor_values import tensor_nbytes
from serve.app_config import AppConfig
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.deployments.stage_caches import FIRST_FRAME_CACHE, model_identity, open_stage_cache


class ImageConditionerDeployment:
    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, spec, placement = load_stage_context(config, "image_encoder", model)
        self.stage = load_image_conditioner(spec, placement)
        self.model_thread = ModelThread(app_config.torch_threads)
        self.cache = open_stage_cache(app_config, FIRST_FRAME_CACHE)
        self.model_id = model_identity(spec, placement, "ImageConditioner")

    async def condition(self, request: GenerationRequest) -> ImageConditioning:
        def compute():
            return self.model_thread.run(self.stage.condition, request)

        if self.cache is None:
            return await compute()
        # The image-to-video "prefill": the same first frame at the same size and length
        # conditions every request the same way, whatever its prompt or seed.
        key = first_frame_key(self.model_id, request.image, request.width, request.height, request.num_frames)
        conditioning, _ = await self.cache.get_or_compute(key, compute, tensor_nbytes)
        return conditioning
