from __future__ import annotations

from ray import serve

from engine.stages.prompt_expander import PromptExpander, PromptExpanderConfig
from serve.app_config import AppConfig
from serve.deployments.model_stage import ModelThread, keep_torch_single_threaded


class PromptExpanderDeployment:
    def __init__(self, app_config: AppConfig):
        keep_torch_single_threaded()  # only the model thread runs torch on several threads
        settings = app_config.prompt_expander
        if settings.model is None:
            raise ValueError("PromptExpander deployed without prompt_expander.model")
        self.stage = PromptExpander(
            PromptExpanderConfig(model=settings.model, max_new_tokens=settings.max_new_tokens),
            app_config.resolved_cache_dir(),
        )
        self.model_thread = ModelThread(app_config.torch_threads)

    # Prompts arriving together share one generate call.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def expand(self, prompts: list[str]) -> list[str]:
        return await self.model_thread.run(self.stage.expand, prompts)
