"""Multi-rank Denoiser replicas served for real: a gang of 2 ranks per replica on the test's Ray cluster.

Two applications: tensor parallel at /tp and Ulysses sequence parallel at /sp, both with
continuous batching on. Rank 1 of each replica is a Ray actor in the replica's placement
group, joined to rank 0 over gloo (the CPU path of the NCCL code).
"""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import ray

from engine.request_validation import validate_generation

pytestmark = pytest.mark.timeout(600)
APPS = {"tp": {"tensor": 2}, "sp": {"sequence": 2}}


@pytest.fixture(scope="module")
def parallel_cluster(ray_cluster, serve_port, preset_cache, tmp_path_factory):
    from serve.app_config import AppConfig
    from serve.cluster_launcher import default_serve_config, deploy

    port = serve_port
    state_root = tmp_path_factory.mktemp("parallel-state")
    config = None
    for name, parallel in APPS.items():
        args = AppConfig.model_validate({
            "models": ["tiny"], "cache_dir": str(preset_cache), "device": "cpu", "parallel": parallel,
            "storage": {"state_dir": str(state_root / name)},
            "jobs": {"lease_seconds": 3.0, "poll_interval_seconds": 0.05},
            "api": {"poll_after_ms": 100},
        })
        application = default_serve_config(args, port=port)
        app = application["applications"][0]
        app["name"], app["route_prefix"] = name, f"/{name}"
        for deployment in app["deployments"]:
            if deployment["name"] == "Denoiser":
                # One gang per app, checked often, so the fault test sees the replacement quickly.
                deployment["autoscaling_config"] = None
                deployment["num_replicas"] = 1
                deployment["health_check_period_s"] = 1
                deployment["graceful_shutdown_timeout_s"] = 2
        if config is None:
            config = application
        else:
            config["applications"].append(app)
    deploy(config, timeout_s=600)
    return {"port": port, "state_root": state_root}


def _client(cluster, app):
    from openai import OpenAI

    return OpenAI(base_url=f"http://127.0.0.1:{cluster['port']}/{app}/v1", api_key="unused", max_retries=0,
                  timeout=120)


def _rank_actors(app: str) -> dict[str, str]:
    """Live rank actors of ``app``'s Denoiser replicas: name -> actor id (named actors, from the GCS)."""
    names = [entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
             if entry["name"].startswith("videoserve-denoiser-rank") and f":{app}:" in entry["name"]]
    return {name: ray.get_actor(name, namespace="serve")._actor_id.hex() for name in names}


@pytest.mark.parametrize("app", list(APPS))
def test_parallel_replica_output_equals_one_rank(parallel_cluster, tiny_pipeline, app):
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    client = _client(parallel_cluster, app)
    fields = {"seed": 77, "num_inference_steps": 3, "guidance_scale": 5.0}
    # One frame at 48x48 is 9 tokens: odd, so the Ulysses split pads and masks.
    cases = [("a fox in snow", 48, 48, 1), ("a boat", 32, 32, 9), ("a fox in snow", 48, 48, 1)]
    created = [client.videos.create(prompt=prompt, size=f"{width}x{height}", extra_body={**fields, "num_frames": frames})
               for prompt, width, height, frames in cases]
    for video in created:
        finished = client.videos.poll(video.id, poll_interval_ms=100)
        assert finished.status == "completed", finished
    for video, (prompt, width, height, frames) in zip(created, cases):
        served = np.load(io.BytesIO(client.videos.download_content(video.id, variant="frames").read()))
        request = validate_generation({"prompt": prompt, "width": width, "height": height, "num_frames": frames,
                                       **fields}, tiny_pipeline.spec)
        expected = tiny_pipeline.generate(request).frames
        assert served.shape == expected.shape
        assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
    metrics = httpx.get(f"http://127.0.0.1:{parallel_cluster['port']}/{app}/metrics").text
    moved = {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "videoserve_denoise_communication_bytes_total"
    }
    expected_kind = "all_reduce" if app == "tp" else "all_to_all"
    assert moved.get(expected_kind, 0) > 0


def test_killing_a_rank_mid_job_replaces_the_gang_and_the_job_completes(parallel_cluster):
    from serve.jobs.open_store import open_job_store

    client = _client(parallel_cluster, "tp")
    ranks_before = _rank_actors("tp")
    assert len(ranks_before) == 1  # degree 2: rank 1 is the one actor; rank 0 is the replica
    video = client.videos.create(prompt="survives a dead rank", size="64x64",
                                 extra_body={"num_frames": 9, "num_inference_steps": 60, "seed": 5})
    deadline = time.monotonic() + 120
    while client.videos.retrieve(video.id).progress < 5:
        assert time.monotonic() < deadline, "the job never started denoising"
        time.sleep(0.1)
    ray.kill(ray.get_actor(next(iter(ranks_before)), namespace="serve"), no_restart=True)
    finished = client.videos.poll(video.id, poll_interval_ms=200)
    assert finished.status == "completed"
    ranks_after = _rank_actors("tp")
    assert len(ranks_after) == 1 and not set(ranks_after.values()) & set(ranks_before.values())
    # The gang was replaced as a whole: a new replica (its id is in the rank's name) started it.
    assert not set(ranks_after) & set(ranks_before)
    store = open_job_store(f"sqlite:///{parallel_cluster['state_root'] / 'tp' / 'jobs.db'}")
    try:
        assert store.get(video.id).attempts >= 2  # the failed attempt was retried, not lost
    finally:
        store.close()
