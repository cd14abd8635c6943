from __future__ import annotations

import asyncio
from pathlib import Path

from engine.post_processing.post_processor import PostProcessOptions, PostProcessor, PostProcessResult
from engine.stage_types import Frames
from serve.app_config import AppConfig


class PostProcessorDeployment:
    def __init__(self, config: dict):
        app_config = AppConfig.model_validate(config)
        settings = app_config.post_processing
        self.stage = PostProcessor(settings.upscaler_model_dir, device=app_config.resolved_device(),
                                   interpolation_model=settings.interpolation_model)

    async def process(self, frames: Frames, options: PostProcessOptions, output_dir: str) -> PostProcessResult:
        return await asyncio.to_thread(self.stage.process, frames, options, Path(output_dir))
