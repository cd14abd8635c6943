from __future__ import annotations

import asyncio

from engine.stage_types import Frames
from engine.stages.vae_decoder import VaeDecoder
from serve.deployments.model_stage import load_stage_context
from serve.object_handoff import ObjectHandoff


class VaeDecoderDeployment:
    def __init__(self, config: dict):
        _, spec, placement = load_stage_context(config, "vae")
        self.stage = VaeDecoder(spec, placement)

    async def decode(self, latents: ObjectHandoff, fps: int) -> Frames:
        return await asyncio.to_thread(self.stage.decode, await latents.fetch(), fps)
