"""The Denoiser's backlog policy scaling a real deployment: up under a burst, down when drained.

A burst of long jobs lands in one replica's batching engine: Serve's ongoing-request
count stays within one replica's capacity (max_ongoing_requests), so only the engine's
backlog (``engine_step_batches``) can ask for the second replica.
"""

from __future__ import annotations

import time

import pytest


pytestmark = pytest.mark.timeout(600)
APP = "scaling"


@pytest.fixture(scope="module")
def scaling_app(ray_cluster, serve_port, preset_cache, tmp_path_factory):
    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config, deploy

    port = serve_port
    args = AppConfig.model_validate({
        "models": ["tiny"], "cache_dir": str(preset_cache), "device": "cpu", "layout": "disaggregated",
        "storage": {"state_dir": str(tmp_path_factory.mktemp("scaling-state"))},
        "jobs": {"poll_interval_seconds": 0.05, "max_concurrent_per_ingress": 32},
        # Two requests per step: a burst of 8 long jobs is then a long backlog of batched steps.
        "denoiser": {"max_batch_size": 2},
    })
    config = default_serve_config(args, port=port)
    app = config["applications"][0]
    app["name"], app["route_prefix"] = APP, f"/{APP}"
    # Replicas report their engine backlog every 0.5 s instead of Serve's default 10 s.
    app["runtime_env"]["env_vars"]["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = "0.5"
    for deployment in app["deployments"]:
        if deployment["name"] == "Denoiser":
            deployment["autoscaling_config"].update(
                min_replicas=1, max_replicas=2, upscale_delay_s=0, downscale_delay_s=5, look_back_period_s=1,
                policy={**deployment["autoscaling_config"]["policy"], "policy_kwargs": {"target_backlog_steps": 30}},
            )
        elif deployment["name"] != "VideoAPI":
            deployment["autoscaling_config"] = None
            deployment["num_replicas"] = 1
    deploy(config, timeout_s=600)
    return f"http://127.0.0.1:{port}/{APP}"


def _denoiser_replicas() -> int:
    """Replicas the controller runs or is starting: its scaling decision, before a new one is up."""
    from ray import serve
    from ray.serve.schema import ReplicaState

    status = serve.status().applications[APP].deployments["Denoiser"]
    return sum(count for state, count in status.replica_states.items() if state is not ReplicaState.STOPPING)


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def test_denoiser_scales_on_its_engine_backlog(scaling_app):
    from openai import OpenAI

    client = OpenAI(base_url=f"{scaling_app}/v1", api_key="unused", max_retries=0, timeout=120)
    assert _denoiser_replicas() == 1
    # 8 jobs x 100 steps, two per step: about 400 batched steps of backlog, far over the
    # target of 30 per replica, while 8 ongoing requests are far below max_ongoing_requests.
    videos = [client.videos.create(prompt=f"burst {n}", size="256x256",
                                   extra_body={"num_frames": 17, "num_inference_steps": 100, "seed": n})
              for n in range(8)]

    def scaled_up() -> bool:
        if _denoiser_replicas() == 2:
            return True
        # Only a backlog can scale it: if every job has already finished, say so.
        assert any(client.videos.retrieve(v.id).status in ("queued", "in_progress") for v in videos), \
            "the burst drained before the Denoiser scaled up"
        return False

    _wait_for(scaled_up, 240, "the Denoiser never scaled up on its backlog")
    for video in videos:
        assert client.videos.poll(video.id, poll_interval_ms=200).status == "completed"
    _wait_for(lambda: _denoiser_replicas() == 1, 120, "the Denoiser never scaled back down once drained")
