"""A served app with two API keys and an admin, jobs in a real Redis: what a tenant can and
cannot see, the per-key limits, webhook targets refused at the edge, retention and
``storage.keep_frames`` off. Every request goes to the app on loopback."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)
APP = "tenants"
ALICE, BOB, CAROL, ADMIN = "vs-served-alice", "vs-served-bob", "vs-served-carol", "vs-served-admin"
RATE_PER_MINUTE = 200
SMALL = {"size": "32x32", "num_frames": 5, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def tenants_app(ray_cluster, serve_port, preset_specs, redis_server, tmp_path_factory):
    from ray import serve

    from serve.app_builder import build_application
    from serve.app_config import AppConfig

    preset_specs["tiny"]
    config = AppConfig.model_validate({
        "models": ["tiny"], "cache_dir": str(preset_specs.cache), "device": "cpu",
        "storage": {"state_dir": str(tmp_path_factory.mktemp("tenants-state")), "keep_frames": False,
                    "retention_seconds": 3600, "job_store_url": f"{redis_server.url}?prefix=tenants-{uuid.uuid4().hex}"},
        "jobs": {"poll_interval_seconds": 0.05, "lease_seconds": 5.0, "job_timeout_seconds": 120,
                 "max_concurrent_per_ingress": 1},  # so a queue builds up
        "api": {"poll_after_ms": 100, "api_keys_env": "VS_TEST_KEYS", "admin_api_keys_env": "VS_TEST_ADMIN_KEYS",
                "max_queued_per_key": 3, "requests_per_minute_per_key": RATE_PER_MINUTE},
    })
    # The keys reach the replicas as the chart passes them: environment variables.
    env = {"VS_TEST_KEYS": f"{ALICE},{BOB},{CAROL}", "VS_TEST_ADMIN_KEYS": ADMIN}
    serve.start(http_options={"host": "127.0.0.1", "port": serve_port})
    serve.run(build_application(config, runtime_env={"env_vars": env}), name=APP, route_prefix=f"/{APP}")
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    serve.delete(APP)


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _wait_final(client: httpx.Client, video_id: str) -> dict:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        video = client.get(f"/v1/videos/{video_id}").json()
        if video["status"] in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise AssertionError(f"{video_id} did not finish")


def test_one_tenant_cannot_see_read_download_or_delete_anothers_video(tenants_app):
    import openai

    alice, bob, admin = (_client(tenants_app, key) for key in (ALICE, BOB, ADMIN))
    video = alice.post("/v1/videos", json={"prompt": "alice's lighthouse", **SMALL}).json()
    done = _wait_final(alice, video["id"])
    assert done["status"] == "completed"
    for method, path in [("GET", ""), ("GET", "/content"), ("GET", "/content?variant=thumbnail"),
                         ("GET", "/events"), ("DELETE", "")]:
        response = bob.request(method, f"/v1/videos/{video['id']}{path}")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (method, path)
    assert bob.post(f"/v1/videos/{video['id']}/remix", json={"prompt": "x"}).status_code == 404
    assert video["id"] not in {item["id"] for item in bob.get("/v1/videos?limit=100").json()["data"]}
    # The official SDK sees the same as a client.
    sdk = openai.OpenAI(base_url=f"{tenants_app}/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        sdk.videos.retrieve(video["id"])
    # Alice still has it; the admin sees it and everyone's.
    assert alice.get(f"/v1/videos/{video['id']}/content").status_code == 200
    assert admin.get(f"/v1/videos/{video['id']}").json()["id"] == video["id"]
    assert video["id"] in {item["id"] for item in admin.get("/v1/videos?limit=100").json()["data"]}


def test_ended_jobs_say_when_they_expire_and_frames_are_not_kept_when_turned_off(tenants_app):
    alice = _client(tenants_app, ALICE)
    video = _wait_final(alice, alice.post("/v1/videos", json={"prompt": "a kept clip", **SMALL}).json()["id"])
    assert video["expires_at"] - video["completed_at"] in (3599, 3600, 3601)
    frames = alice.get(f"/v1/videos/{video['id']}/content?variant=frames")
    assert frames.status_code == 404 and frames.json()["error"]["param"] == "variant"
    assert alice.get(f"/v1/videos/{video['id']}/content").status_code == 200


def test_each_key_has_its_own_queue_share(tenants_app):
    bob = _client(tenants_app, BOB)
    long_job = {"prompt": "a long one", "size": "64x64", "num_frames": 17, "num_inference_steps": 60}
    statuses = [bob.post("/v1/videos", json=long_job) for _ in range(8)]
    refused = [response for response in statuses if response.status_code == 429]
    assert refused, [response.status_code for response in statuses]
    assert refused[0].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused[0].headers["retry-after"]) >= 1
    # Alice is not held back by bob's queue.
    alice = _client(tenants_app, ALICE)
    assert alice.post("/v1/videos", json={"prompt": "alice goes on", **SMALL}).status_code == 200
    for response in statuses:
        if response.status_code == 200:
            bob.delete(f"/v1/videos/{response.json()['id']}")


@pytest.mark.parametrize("target", ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook",
                                    "http://0.0.0.0:9/hook", "http://2130706433:9/hook", "http://127.1:9/hook",
                                    "http://[::ffff:127.0.0.1]:9/hook"])
def test_webhook_targets_that_reach_inside_are_refused_at_the_edge(tenants_app, target):
    # All loopback spellings: the default policy (no allowlist) refuses each before any job exists.
    alice = _client(tenants_app, ALICE)
    before = len(alice.get("/v1/videos?limit=100").json()["data"])
    response = alice.post("/v1/videos", json={"prompt": "hook", "webhook_url": target, **SMALL})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "webhook_url"
    assert len(alice.get("/v1/videos?limit=100").json()["data"]) == before


def test_a_key_past_its_request_rate_gets_429_with_retry_after_and_others_do_not(tenants_app):
    carol = _client(tenants_app, CAROL)
    answers = [carol.get("/v1/models").status_code for _ in range(RATE_PER_MINUTE + 5)]
    assert answers[:RATE_PER_MINUTE].count(200) >= RATE_PER_MINUTE - 5  # Redis counts them for every replica
    limited = carol.get("/v1/videos")
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert _client(tenants_app, ALICE).get("/v1/models").status_code == 200
