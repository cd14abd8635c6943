from __future__ import annotations

from engine.stage_types import Frames, Latents
from engine.stages.loading import load_vae_decoder
from serve.app_config import AppConfig
from serve.deployments.decode_batching import DecodeBatcher
from serve.deployments.model_stage import ModelThread, compile_for_default_size, load_stage_context


class VaeDecoderDeployment:
    def __init__(self, config: AppConfig, model: str | None = None):
        app_config, spec, placement = load_stage_context(config, "vae", model)
        compile_decoder = app_config.vae_decoder.compile
        self.stage = load_vae_decoder(spec, placement, compile_decoder=compile_decoder)
        self.model_thread = ModelThread(app_config.torch_threads)
        if compile_decoder:
            compile_for_default_size(self.model_thread, "VAE decoder", self.stage.warm_up_compiled, spec)
        self.batcher = DecodeBatcher(self.stage.decode_many, self.model_thread.run,
                                     app_config.vae_decoder.resolved_max_batch_size(app_config.resolved_device()))

    async def decode(self, latents: Latents, fps: int) -> Frames:
        return await self.batcher.decode(latents, fps)
