from __future__ import annotations

from engine.stage_types import Frames
from engine.stages.vae_decoder import VaeDecoder
from serve.deployments.model_stage import ModelThread, compile_for_default_size, load_stage_context
from serve.object_handoff import ObjectHandoff


class VaeDecoderDeployment:
    def __init__(self, config: dict):
        app_config, spec, placement = load_stage_context(config, "vae")
        compile_decoder = app_config.vae_decoder.compile
        self.stage = VaeDecoder(spec, placement, compile_decoder=compile_decoder)
        self.model_thread = ModelThread(app_config.torch_threads)
        if compile_decoder:
            compile_for_default_size(self.model_thread, "VAE decoder", self.stage.warm_up_compiled, spec)

    async def decode(self, latents: ObjectHandoff, fps: int) -> Frames:
        return await self.model_thread.run(self.stage.decode, await latents.fetch(), fps)
