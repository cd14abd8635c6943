"""A real local Ray cluster (one per test session) and videoserve deployed on it."""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

WEBHOOK_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZpZGVvc2VydmUtdGVzdHMh"  # base64 of a 32-byte test secret


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class DeployedCluster:
    port: int
    config: dict
    state_dirs: dict[str, Path]

    def url(self, app: str) -> str:
        prefix = "" if app == "t2v" else f"/{app}"
        return f"http://127.0.0.1:{self.port}{prefix}"


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    # Short temp path: Ray's unix socket paths must stay under ~100 characters.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    # Logical CPUs only: every stage asks for a fraction, and tests run many replicas.
    ray.init(num_cpus=8, include_dashboard=False, namespace="serve", _temp_dir=temp_dir, log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def serve_port(ray_cluster) -> int:
    """The one HTTP port of the session: Serve's proxy keeps the port it first started on
    until Serve shuts down, so every module that deploys an app uses this one."""
    return free_port()


def cluster_config(port: int, preset_cache: Path, state_root: Path) -> tuple[dict, dict[str, Path]]:
    """Two applications: text-to-video at /, image-to-video at /i2v with every stage scaled to 2."""
    from serve.app_config import AppConfig
    from serve.deployment_defaults import DEFAULT_DEPLOYMENT_OPTIONS
    from serve.cluster_launcher import default_serve_config

    state_dirs = {"t2v": state_root / "t2v", "i2v": state_root / "i2v"}
    common = {
        "cache_dir": str(preset_cache),
        "device": "cpu",
        # Per-stage deployments (replica counts, kills, caches across stages) are what these apps test.
        "layout": "disaggregated",
        "jobs": {"lease_seconds": 3.0, "poll_interval_seconds": 0.05, "max_queued": 64},
        "api": {"poll_after_ms": 100, "max_request_bytes": 256 * 1024},
        "webhooks": {"secret": WEBHOOK_SECRET, "initial_backoff_seconds": 0.05, "allow_private_targets": True},
    }
    t2v = default_serve_config(
        AppConfig.model_validate({**common, "models": ["tiny"], "storage": {"state_dir": str(state_dirs["t2v"])}}),
        port=port,
    )
    i2v_config = AppConfig.model_validate(
        {**common, "models": ["tiny-i2v"], "storage": {"state_dir": str(state_dirs["i2v"])},
         "prompt_expander": {"model": "tiny-llm", "max_new_tokens": 8}}
    )
    i2v = default_serve_config(i2v_config, port=port)["applications"][0]
    i2v["name"], i2v["route_prefix"] = "i2v", "/i2v"
    # The config file decides replica counts: every model stage of this app runs two.
    for deployment in i2v["deployments"]:
        if deployment["name"] != "VideoAPI":
            # A fixed count replaces the code's autoscaling: null switches that off explicitly.
            deployment["autoscaling_config"] = None
            deployment["num_replicas"] = 2
    t2v["applications"][0]["name"] = "t2v"
    t2v["applications"].append(i2v)
    assert set(DEFAULT_DEPLOYMENT_OPTIONS) >= {d["name"] for d in i2v["deployments"]}
    return t2v, state_dirs


def deploy_models_app(name: str, models: list[str], layout: str, serve_port: int, preset_specs,
                      state_dir: Path) -> tuple[str, list[str]]:
    """An application ``name`` at ``/name`` serving ``models`` in ``layout``, one replica per model
    stage (many deployments on a small machine); its URL and deployment names."""
    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config, deploy

    for model in models:  # built once here, not raced by the replicas
        preset_specs[model]
    args = AppConfig.model_validate({
        "models": models, "cache_dir": str(preset_specs.cache), "device": "cpu", "layout": layout,
        "storage": {"state_dir": str(state_dir)},
        "jobs": {"poll_interval_seconds": 0.05, "lease_seconds": 5.0},
        "api": {"poll_after_ms": 100},
    })
    config = default_serve_config(args, port=serve_port)
    app = config["applications"][0]
    app["name"], app["route_prefix"] = name, f"/{name}"
    for deployment in app["deployments"]:
        if deployment["name"] != "VideoAPI":
            deployment["autoscaling_config"] = None
            deployment["num_replicas"] = 1
    deploy(config, timeout_s=600)
    return f"http://127.0.0.1:{serve_port}/{name}", [d["name"] for d in app["deployments"]]
