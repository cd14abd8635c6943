"""The HTTP ingress: the FastAPI app, the job store and this replica's job runner."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ray import serve

from engine.model_registry import resolve_model
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.deployments.stage_caches import CACHE_NAMES, open_stage_cache
from serve.job_runner import JobRunner, StageHandles
from serve.job_store import open_job_store
from serve.metrics import VideoServeMetrics
from serve.video_service import VideoService
from serve.webhooks import WebhookSender, WebhookSettings, generate_webhook_secret

logger = logging.getLogger("videoserve.ingress")


def webhook_secret(config: AppConfig) -> str:
    """The configured secret, or one generated once and kept in the state directory."""
    if config.webhooks.secret:
        return config.webhooks.secret
    path = config.storage.resolved_state_dir() / "webhook_secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(generate_webhook_secret())
        path.chmod(0o600)
    return path.read_text().strip()


# Late-bound: Serve builds the FastAPI app inside the replica, after __init__, through
# __serve_build_asgi_app__, so the app and this replica's service are the same objects.
@serve.ingress()
class VideoAPIDeployment:
    def __init__(self, config: dict, text_encoder, denoiser, vae_decoder, post_processor,
                 image_conditioner=None, prompt_expander=None):
        app_config = AppConfig.model_validate(config)
        spec = resolve_model(app_config.model, app_config.resolved_cache_dir())
        store = open_job_store(app_config.storage.resolved_job_store_url())
        artifacts = ArtifactStore(Path(app_config.storage.resolved_artifact_dir()))
        metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
        webhooks = WebhookSender(
            WebhookSettings(
                secret=webhook_secret(app_config),
                max_attempts=app_config.webhooks.max_attempts,
                initial_backoff_s=app_config.webhooks.initial_backoff_seconds,
            ),
            on_attempt=lambda event, outcome: metrics.webhook_deliveries.labels(event, outcome).inc(),
        )
        handles = StageHandles(text_encoder, denoiser, vae_decoder, post_processor, image_conditioner, prompt_expander)
        self.runner = JobRunner(app_config, spec, store, artifacts, handles, metrics, webhooks)
        caches = {}
        if app_config.caches.enabled:
            caches = {name: open_stage_cache(app_config, name) for name in CACHE_NAMES}
        self.service = VideoService(app_config, spec, store, artifacts, metrics, self.runner,
                                    expander_enabled=prompt_expander is not None, caches=caches)
        # Serve calls __init__ on the replica's event loop, so the runner can start now.
        asyncio.get_running_loop()
        self.runner.start()

    def __serve_build_asgi_app__(self):
        api = create_api()
        api.state.service = self.service
        return api

    async def __del__(self):
        await self.runner.stop()
