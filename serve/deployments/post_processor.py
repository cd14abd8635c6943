from __future__ import annotations

from pathlib import Path

from engine.post_processing.post_processor import PostProcessOptions, PostProcessor, PostProcessResult
from engine.stage_types import Frames
from serve.app_config import AppConfig
from serve.deployments.model_stage import ModelThread, keep_torch_single_threaded


class PostProcessorDeployment:
    def __init__(self, app_config: AppConfig):
        keep_torch_single_threaded()  # only the model thread runs torch on several threads
        settings = app_config.post_processing
        self.stage = PostProcessor(settings.upscaler_model_dir, device=app_config.resolved_device(),
                                   interpolation_model=settings.interpolation_model)
        self.model_thread = ModelThread(app_config.torch_threads)

    async def process(self, frames: Frames, options: PostProcessOptions, output_dir: str) -> PostProcessResult:
        return await self.model_thread.run(self.stage.process, frames, options, Path(output_dir))
