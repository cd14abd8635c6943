from __future__ import annotations

import logging
import time

from engine.stage_types import Frames
from engine.stages.vae_decoder import VaeDecoder
from serve.deployments.model_stage import ModelThread, load_stage_context
from serve.object_handoff import ObjectHandoff

logger = logging.getLogger("ray.serve")


class VaeDecoderDeployment:
    def __init__(self, config: dict):
        app_config, spec, placement = load_stage_context(config, "vae")
        compile_decoder = app_config.vae_decoder.compile
        self.stage = VaeDecoder(spec, placement, compile_decoder=compile_decoder)
        self.model_thread = ModelThread(app_config.torch_threads)
        if compile_decoder:
            defaults = spec.defaults
            started = time.perf_counter()
            # On the model thread: inductor's CPU kernels take the thread count of the thread that compiles them.
            shape = self.model_thread.run_blocking(self.stage.warm_up_compiled, defaults.width, defaults.height,
                                                   defaults.num_frames)
            logger.info("compiled the VAE decoder for latents %s in %.1fs", shape, time.perf_counter() - started)

    async def decode(self, latents: ObjectHandoff, fps: int) -> Frames:
        return await self.model_thread.run(self.stage.decode, await latents.fetch(), fps)
