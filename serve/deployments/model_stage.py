"""What every model stage deployment does on start-up."""

from __future__ import annotations

from engine.model_registry import resolve_model
from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from serve.app_config import AppConfig


def load_stage_context(config: dict | AppConfig, component: str) -> tuple[AppConfig, ModelSpec, StagePlacement]:
    app_config = config if isinstance(config, AppConfig) else AppConfig.model_validate(config)
    if app_config.torch_threads is not None:
        import torch

        torch.set_num_threads(app_config.torch_threads)
    spec = resolve_model(app_config.model, app_config.resolved_cache_dir())
    return app_config, spec, StagePlacement.default_for(component, app_config.resolved_device())
