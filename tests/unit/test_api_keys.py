"""API keys through the real FastAPI routes (no Ray needed), with the official openai SDK as one client.

The app is the one the ingress serves (``create_api`` with the keys read from the env var
``api.api_keys_env`` names) in front of a real VideoService on a SQLite job store; no
job runner is attached, so accepted jobs simply stay queued.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serve.api.api_keys import ApiKeys, api_keys_from_env
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.open_store import open_job_store
from serve.jobs.store import JobStatus
from serve.metrics import VideoServeMetrics
from serve.secret_env import MissingSecretError
from serve.video_service import VideoService

KEYS_ENV = "VIDEOSERVE_TEST_API_KEYS"
KEYS = ("vs-key-one", "vs-key-two")
UNAUTHORIZED_ERROR_FIELDS = {"type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
V1_REQUESTS = [
    ("GET", "/v1/models"),
    ("GET", "/v1/videos"),
    ("POST", "/v1/videos"),
    ("GET", "/v1/videos/video_0123"),
    ("DELETE", "/v1/videos/video_0123"),
    ("GET", "/v1/videos/video_0123/content"),
    ("GET", "/v1/videos/video_0123/events"),
    ("GET", "/v1/no-such-route"),
    ("GET", "/v1"),
]


def _app(tmp_path, spec, api_keys: ApiKeys | None):
    config = AppConfig(storage={"state_dir": str(tmp_path)}, api={"api_keys_env": KEYS_ENV})
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
    api = create_api(api_keys)
    api.state.service = VideoService(config, {spec.name: spec}, store, ArtifactStore(config.storage.resolved_artifact_dir()),
                                     metrics, runner=None, expander_enabled=False)
    return api, store


@pytest.fixture
def served(tmp_path, tiny_spec, monkeypatch):
    """(client, store) for an app whose keys come from the environment, as the ingress reads them."""
    monkeypatch.setenv(KEYS_ENV, f" {KEYS[0]} ,{KEYS[1]},")
    api, store = _app(tmp_path, tiny_spec, api_keys_from_env(KEYS_ENV))
    with TestClient(api) as client:
        yield client, store
    store.close()


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("method,path", V1_REQUESTS)
def test_every_v1_request_without_a_key_gets_401_in_openai_shape(served, method, path):
    client, store = served
    response = client.request(method, path, json={"prompt": "a cat"} if method == "POST" else None)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Authorization: Bearer" in error["message"]
    assert {key: error[key] for key in UNAUTHORIZED_ERROR_FIELDS} == UNAUTHORIZED_ERROR_FIELDS
    assert sum(store.count_by_status().values()) == 0  # nothing reached the service


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", f"Bearer {KEYS[0][:-1]}", f"Bearer {KEYS[0]}x", f"Basic {KEYS[0]}", "Bearer ", KEYS[0],
     f"Bearer {KEYS[0]},{KEYS[1]}"],
    ids=["wrong", "prefix", "longer", "basic-scheme", "empty", "no-scheme", "both-keys-as-one"],
)
def test_a_wrong_or_malformed_key_is_refused(served, authorization):
    client, _ = served
    response = client.get("/v1/models", headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("key", KEYS)
def test_each_configured_key_is_accepted(served, key):
    client, store = served
    assert client.get("/v1/models", headers=_bearer(key)).json()["data"][0]["id"] == "tiny"
    assert client.get("/v1/models", headers={"authorization": f"bearer {key}"}).status_code == 200  # any case
    created = client.post("/v1/videos", json={"prompt": "a cat", "num_inference_steps": 1}, headers=_bearer(key))
    assert created.status_code == 200 and created.json()["status"] == "queued"
    assert store.count_by_status()[JobStatus.QUEUED] == 1


def test_health_and_metrics_stay_open_and_count_refusals(served):
    client, _ = served
    assert client.get("/healthz").json() == {"status": "ok", "models": ["tiny"]}
    client.get("/v1/models")  # refused
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'videoserve_http_requests_total{method="GET",route="unmatched",status="401"} 1.0' in metrics.text


def test_the_openai_sdk_authenticates_with_its_api_key(served):
    import openai

    client, _ = served
    sdk = openai.OpenAI(api_key=KEYS[1], base_url="http://testserver/v1", http_client=client, max_retries=0)
    assert [model.id for model in sdk.models.list()] == ["tiny"]
    video = sdk.videos.create(prompt="a lighthouse", extra_body={"num_inference_steps": 1})
    assert video.status == "queued" and sdk.videos.retrieve(video.id).id == video.id
    refused = openai.OpenAI(api_key="sk-not-a-key", base_url="http://testserver/v1", http_client=client, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as error:
        refused.models.list()
    assert error.value.status_code == 401 and error.value.code == "invalid_api_key"


def test_keys_guard_v1_under_a_route_prefix_too(tmp_path, tiny_spec):
    # Serve mounts a second application under its route_prefix, which reaches the app as root_path.
    api, store = _app(tmp_path, tiny_spec, ApiKeys(KEYS))
    with TestClient(api, root_path="/i2v") as client:
        assert client.get("/i2v/v1/models").status_code == 401
        assert client.get("/i2v/v1/models", headers=_bearer(KEYS[0])).status_code == 200
        assert client.get("/i2v/healthz").status_code == 200
    store.close()


def test_without_api_keys_env_v1_is_open(tmp_path, tiny_spec):
    assert api_keys_from_env(None) is None
    api, store = _app(tmp_path, tiny_spec, None)
    with TestClient(api) as client:
        assert client.get("/v1/models").status_code == 200
    store.close()


@pytest.mark.parametrize("value,state", [(None, "not set"), ("", "empty"), ("   ", "empty")])
def test_a_named_but_missing_keys_variable_is_a_start_up_error_naming_it(monkeypatch, value, state):
    if value is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, value)
    with pytest.raises(MissingSecretError, match=f"api.api_keys_env names the environment variable {KEYS_ENV}, "
                                                 f"but {KEYS_ENV} is {state}"):
        api_keys_from_env(KEYS_ENV)


def test_a_keys_variable_of_only_commas_is_an_error(monkeypatch):
    monkeypatch.setenv(KEYS_ENV, " , ,")
    with pytest.raises(MissingSecretError, match=f"{KEYS_ENV} holds no API key"):
        api_keys_from_env(KEYS_ENV)


def test_keys_are_compared_whole(monkeypatch):
    monkeypatch.setenv(KEYS_ENV, "abc,é-key")
    keys = api_keys_from_env(KEYS_ENV)
    assert len(keys) == 2
    assert keys.accepts(b"abc") and keys.accepts("é-key".encode())
    assert not any(keys.accepts(candidate) for candidate in (b"ab", b"abcd", b"", b"abc,\xc3\xa9-key", b"ABC"))
