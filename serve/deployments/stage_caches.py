"""The conditioning caches a stage replica uses, named per application."""

from __future__ import annotations

import hashlib

from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement
from serve.app_config import AppConfig
from serve.caches.client import ConditioningCache

TEXT_CACHE = "text_embeddings"
FIRST_FRAME_CACHE = "first_frames"
CACHE_NAMES = (TEXT_CACHE, FIRST_FRAME_CACHE)


def cache_actor_name(app_name: str, cache: str) -> str:
    return f"videoserve-{app_name}-{cache}"


def current_app_name() -> str:
    from ray import serve

    return serve.get_replica_context().app_name


def open_stage_cache(config: AppConfig, cache: str) -> ConditioningCache | None:
    if not config.caches.enabled:
        return None
    max_bytes = config.caches.text_max_bytes if cache == TEXT_CACHE else config.caches.first_frame_max_bytes
    return ConditioningCache(cache_actor_name(current_app_name(), cache), max_bytes)


def model_identity(spec: ModelSpec, placement: StagePlacement, kind: str) -> str:
    """What a cached value depends on besides its inputs: the weights and their precision.

    Content-based where the weights are on this machine, so every model sharing an encoder
    (all Wan models share UMT5) shares its cache entries too; else the model's source.
    """
    from serve.model_stages import stage_identity

    identity = stage_identity(spec, kind)
    weights = spec.source if identity is None else hashlib.sha256(repr(identity).encode()).hexdigest()
    return f"{weights}|{placement.dtype}"
