"""The HTTP ingress: the FastAPI app, the job store and this replica's job runner."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ray import serve

from serve.api.api_keys import api_keys_from_env
from serve.api.rate_limit import tenant_rate_limiter
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.deployments.stage_caches import CACHE_NAMES, open_stage_cache
from serve.jobs.retention import RetentionSweeper
from serve.jobs.runner import JobRunner, ModelRoute, StageHandles
from serve.jobs.webhook_outbox import WebhookOutboxDeliverer
from serve.jobs.open_store import open_job_store
from serve.metrics import STAGE_DEPLOYMENTS, VideoServeMetrics
from serve.model_stages import COLOCATED_KIND, served_spec
from serve.video_service import VideoService
from serve.webhook_targets import TargetPolicy
from serve.webhooks import WebhookSender, WebhookSettings, configured_webhook_secret

logger = logging.getLogger("videoserve.ingress")
COLOCATED_STAGES = ("text_encoder", "image_conditioner", "denoiser", "vae_decoder")


def running_stage_replicas(app_name: str) -> dict[str, int]:
    """Running replicas of each stage of ``app_name``, as the Serve controller sees them.

    Blocking (a call to the controller): run it off the event loop.
    """
    application = serve.status().applications.get(app_name)
    if application is None:
        return {}
    running: dict[str, int] = {}
    for stage, kind in STAGE_DEPLOYMENTS.items():
        # A several-model app has one deployment of a kind per model or per shared weights; in the
        # colocated layout a model's Pipeline replicas run its model stages.
        kinds = (kind, COLOCATED_KIND) if stage in COLOCATED_STAGES else (kind,)
        deployments = [status for name, status in application.deployments.items()
                       if any(name == each or name.startswith(f"{each}-") for each in kinds)]
        if deployments:
            running[stage] = sum(status.replica_states.get("RUNNING", 0) for status in deployments)
    return running


# Late-bound: Serve builds the FastAPI app inside the replica, after __init__, through
# __serve_build_asgi_app__, so the app and this replica's service are the same objects.
@serve.ingress()
class VideoAPIDeployment:
    def __init__(self, app_config: AppConfig, routes: dict[str, dict], post_processor, prompt_expander=None):
        # Secrets first: a named but missing variable stops this replica before it serves anything.
        self.api_keys = api_keys_from_env(app_config.api.api_keys_env)
        self.admin_keys = api_keys_from_env(app_config.api.admin_api_keys_env, field="api.admin_api_keys_env")
        self.rate_limiter = tenant_rate_limiter(app_config)
        secret = configured_webhook_secret(
            secret=app_config.webhooks.secret,
            secret_env=app_config.webhooks.secret_env,
            generated_file=app_config.storage.resolved_state_dir() / "webhook_secret",
        )
        # model -> its spec and the handles of its stages (serve/model_stages.py decides which).
        model_routes = {
            model: ModelRoute(
                spec=served_spec(app_config, model),
                handles=StageHandles(handles["TextEncoder"], handles["Denoiser"], handles["VaeDecoder"], post_processor,
                                     handles.get("ImageConditioner"), prompt_expander),
            )
            for model, handles in routes.items()
        }
        store = open_job_store(app_config.storage.resolved_job_store_url(),
                               password_env=app_config.storage.job_store_password_env)
        artifacts = ArtifactStore(Path(app_config.storage.resolved_artifact_dir()))
        metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
        webhook_settings = WebhookSettings(
            secret=secret,
            max_attempts=app_config.webhooks.max_attempts,
            initial_backoff_s=app_config.webhooks.initial_backoff_seconds,
            target_policy=TargetPolicy(app_config.webhooks.allow_private_targets),
        )
        sender = WebhookSender(
            webhook_settings, on_attempt=lambda event, outcome: metrics.webhook_deliveries.labels(event, outcome).inc()
        )
        self.runner = JobRunner(app_config, model_routes, store, artifacts, metrics)
        self.deliverer = WebhookOutboxDeliverer(store, sender, webhook_settings, owner=self.runner.owner,
                                                poll_interval_s=max(app_config.jobs.poll_interval_seconds, 0.5))
        self.runner.on_outbox_written = self.deliverer.wake
        self.sweeper = RetentionSweeper(store, artifacts, app_config.storage.sweep_interval_seconds)
        caches = {}
        if app_config.caches.enabled:
            caches = {name: open_stage_cache(app_config, name) for name in CACHE_NAMES}
        app_name = serve.get_replica_context().app_name
        specs = {model: route.spec for model, route in model_routes.items()}
        self.service = VideoService(app_config, specs, store, artifacts, metrics, self.runner,
                                    expander_enabled=prompt_expander is not None, caches=caches,
                                    stage_replicas=lambda: running_stage_replicas(app_name))
        # Serve calls __init__ on the replica's event loop, so the runner can start now.
        asyncio.get_running_loop()
        self.runner.start()
        self.deliverer.start()
        self.sweeper.start()

    def __serve_build_asgi_app__(self):
        api = create_api(self.api_keys, self.admin_keys, self.rate_limiter)
        api.state.service = self.service
        return api

    async def __del__(self):
        await self.runner.stop()
        await asyncio.gather(self.deliverer.stop(), self.sweeper.stop())
