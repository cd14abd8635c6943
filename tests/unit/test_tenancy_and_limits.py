"""Tenants, per-key limits and a full disk, through the real routes and a real SQLite store.

No Ray: ``create_api`` in front of a real VideoService with no job runner (accepted jobs
stay queued), keys read from the environment as the ingress reads them. The served
versions of these checks are in tests/cluster/test_tenancy_served.py.
"""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from serve.api.api_keys import ApiKeys
from serve.api.rate_limit import TenantRateLimiter
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.open_store import open_job_store
from serve.jobs.store import JobStatus
from serve.metrics import VideoServeMetrics
from serve.tenant import Tenant
from serve.video_service import VideoService
from tests.support.images import image_bytes

ALICE, BOB, ADMIN = "vs-alice", "vs-bob", "vs-admin"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _served(tmp_path, spec, *, api=None, jobs=None, artifacts=None, rate_limiter=None):
    config = AppConfig(storage={"state_dir": str(tmp_path)},
                       api={"api_keys_env": "UNUSED_KEYS", "admin_api_keys_env": "UNUSED_ADMIN", **(api or {})},
                       jobs=jobs or {})
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
    app = create_api(ApiKeys([ALICE, BOB]), ApiKeys([ADMIN]), rate_limiter)
    app.state.service = VideoService(config, {spec.name: spec}, store,
                                     artifacts or ArtifactStore(config.storage.resolved_artifact_dir()),
                                     metrics, runner=None, expander_enabled=False)
    return app, store


@pytest.fixture
def two_tenants(tmp_path, tiny_spec):
    app, store = _served(tmp_path, tiny_spec)
    with TestClient(app) as client:
        yield client, store
    store.close()


def _create(client, key, prompt="a cat", **fields):
    response = client.post("/v1/videos", json={"prompt": prompt, "num_inference_steps": 1, **fields},
                           headers=_bearer(key))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _complete(store, job_id, tmp_path):
    video = tmp_path / f"{job_id}.mp4"
    video.write_bytes(b"mp4")
    store.update(job_id, status=JobStatus.COMPLETED, artifacts={"video": str(video)},
                 metadata={"num_frames": 5, "width": 32, "height": 32, "fps": 16})


def test_another_tenants_video_is_answered_exactly_as_an_unknown_one(two_tenants, tmp_path):
    client, store = two_tenants
    mine = _create(client, ALICE)
    _complete(store, mine, tmp_path)
    unknown = "video_" + "0" * 32
    for method, suffix, body in [("GET", "", None), ("DELETE", "", None), ("GET", "/content", None),
                                 ("GET", "/content?variant=frames", None), ("GET", "/events", None),
                                 ("POST", "/remix", {"prompt": "a dog"})]:
        as_bob = client.request(method, f"/v1/videos/{mine}{suffix}", json=body, headers=_bearer(BOB))
        as_unknown = client.request(method, f"/v1/videos/{unknown}{suffix}", json=body, headers=_bearer(BOB))
        assert as_bob.status_code == as_unknown.status_code == 404, (method, suffix, as_bob.text)
        assert as_bob.json()["error"] == {**as_unknown.json()["error"],
                                          "message": as_unknown.json()["error"]["message"].replace(unknown, mine)}
    assert store.get(mine) is not None  # bob's delete did nothing
    assert client.get(f"/v1/videos/{mine}", headers=_bearer(ALICE)).status_code == 200
    assert client.get(f"/v1/videos/{mine}/content", headers=_bearer(ALICE)).content == b"mp4"


def test_each_tenant_lists_only_its_own_videos_and_an_admin_sees_all(two_tenants):
    client, _ = two_tenants
    alices = {_create(client, ALICE) for _ in range(3)}
    bobs = {_create(client, BOB)}

    def listed(key, **query):
        return {video["id"] for video in client.get("/v1/videos", params={"limit": 100, **query},
                                                     headers=_bearer(key)).json()["data"]}

    assert listed(ALICE) == alices and listed(BOB) == bobs
    assert listed(ADMIN) == alices | bobs
    # Another tenant's id is no cursor: as unknown as any id.
    refused = client.get("/v1/videos", params={"after": next(iter(alices))}, headers=_bearer(BOB))
    assert refused.status_code == 404 and refused.json()["error"]["param"] == "after"
    # The admin reads and deletes anyone's video.
    bob_video = next(iter(bobs))
    assert client.get(f"/v1/videos/{bob_video}", headers=_bearer(ADMIN)).status_code == 200
    assert client.delete(f"/v1/videos/{bob_video}", headers=_bearer(ADMIN)).json()["deleted"] is True
    assert listed(BOB) == set()


def test_a_remix_belongs_to_the_tenant_that_asked(two_tenants, tmp_path):
    client, store = two_tenants
    source = _create(client, ALICE, seed=7)
    _complete(store, source, tmp_path)
    remix = client.post(f"/v1/videos/{source}/remix", json={"prompt": "a dog"}, headers=_bearer(ALICE)).json()
    assert remix["remixed_from_video_id"] == source and remix["seed"] == 7
    assert store.get(remix["id"]).owner == store.get(source).owner == Tenant.of_key(ALICE.encode()).owner


def test_owners_are_key_digests_never_keys(two_tenants):
    client, store = two_tenants
    job = store.get(_create(client, ALICE))
    assert ALICE not in job.model_dump_json() and job.owner.startswith("key_")
    assert job.owner != Tenant.of_key(BOB.encode()).owner


def test_queued_jobs_per_key_are_bounded_with_a_retry_after(tmp_path, tiny_spec):
    app, store = _served(tmp_path, tiny_spec, api={"max_queued_per_key": 2})
    with TestClient(app) as client:
        for _ in range(2):
            _create(client, ALICE)
        refused = client.post("/v1/videos", json={"prompt": "one more"}, headers=_bearer(ALICE))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limit_exceeded" and "this API key" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after"]) >= 1
        _create(client, BOB)  # another key has its own share
        _create(client, ADMIN)  # an admin has no per-key bound
    assert store.count_queued() == 4


def test_the_request_rate_per_key_answers_429_with_the_windows_retry_after(tmp_path, tiny_spec):
    app, store = _served(tmp_path, tiny_spec, rate_limiter=TenantRateLimiter(per_minute=3))
    with TestClient(app) as client:
        assert [client.get("/v1/models", headers=_bearer(ALICE)).status_code for _ in range(3)] == [200] * 3
        limited = client.get("/v1/videos", headers=_bearer(ALICE))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert client.get("/v1/models", headers=_bearer(BOB)).status_code == 200  # bob counts apart
        assert client.get("/healthz").status_code == 200  # probes are never limited


class _FullDisk(ArtifactStore):
    """A volume with no space left. Stand-in: this machine cannot mount a small filesystem
    without root. The real save path runs; its temporary file is created for real and the
    write into it fails with the real errno."""

    def save_input_image(self, job_id, data):
        import tempfile

        real_mkstemp = tempfile.mkstemp

        def mkstemp_on_a_full_disk(*args, **kwargs):
            handle, path = real_mkstemp(*args, **kwargs)
            os.close(handle)
            handle = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
            return handle, path

        tempfile.mkstemp = mkstemp_on_a_full_disk
        try:
            return super().save_input_image(job_id, data)
        finally:
            tempfile.mkstemp = real_mkstemp


def test_a_full_disk_answers_507_with_retry_after_and_keeps_nothing(tmp_path, tiny_i2v_spec):
    artifacts = _FullDisk(tmp_path / "artifacts")
    app, store = _served(tmp_path, tiny_i2v_spec, artifacts=artifacts)
    with TestClient(app) as client:
        response = client.post("/v1/videos", data={"prompt": "the cat turns", "size": "32x32"},
                               files={"input_reference": ("a.png", image_bytes(32, 32, "PNG"), "image/png")},
                               headers=_bearer(ALICE))
    assert response.status_code == 507, response.text
    assert response.json()["error"]["code"] == "insufficient_storage"
    assert int(response.headers["retry-after"]) > 0
    assert sum(store.count_by_status().values()) == 0  # no job
    assert list((tmp_path / "artifacts").iterdir()) == []  # no temp file, no job directory
