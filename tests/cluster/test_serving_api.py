"""The served cluster end to end: a real Ray Serve app, the official openai SDK as client."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from engine.request_validation import validate_generation
from tests.support.repo import REPO_ROOT
from tests.support.images import image_bytes
from tests.support.served_metrics import metric_samples
from tests.support.serving_cluster import WEBHOOK_SECRET, cluster_config, free_port

pytestmark = pytest.mark.timeout(600)
LONG_JOB = {"size": "256x256", "num_frames": 33, "num_inference_steps": 100}


@pytest.fixture(scope="module")
def cluster(ray_cluster, serve_port, preset_cache, redis_server, tmp_path_factory):
    from serve.cluster_launcher import deploy

    port = serve_port
    config, state_dirs = cluster_config(port, preset_cache, tmp_path_factory.mktemp("state"))
    # The image-to-video app keeps its jobs in Redis, as a multi-node deployment would.
    i2v_args = config["applications"][1]["args"]
    i2v_args["storage"]["job_store_url"] = redis_server.url
    deploy(config, timeout_s=600)
    from tests.support.serving_cluster import DeployedCluster

    return DeployedCluster(port=port, config=config, state_dirs=state_dirs)


def openai_client(cluster, app="t2v"):
    from openai import OpenAI

    return OpenAI(base_url=f"{cluster.url(app)}/v1", api_key="not-needed", max_retries=0, timeout=120)


def wait_for(predicate, timeout=120, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def test_openai_sdk_create_poll_retrieve_list_download_delete(cluster):
    import openai

    client = openai_client(cluster)
    video = client.videos.create_and_poll(
        prompt="a red car at night", model="tiny", seconds="1", size="48x32",
        extra_body={"seed": 21, "num_inference_steps": 3, "fps": 8},
    )
    assert video.status == "completed" and video.progress == 100
    assert video.size == "48x32" and video.seconds == "1"
    assert video.model_extra["seed"] == 21
    retrieved = client.videos.retrieve(video.id)
    assert retrieved.id == video.id and retrieved.status == "completed" and retrieved.completed_at
    listed = [item.id for item in client.videos.list(limit=100)]
    assert video.id in listed
    content = client.videos.download_content(video.id).read()
    with av.open(io.BytesIO(content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height, stream.average_rate) == ("h264", 48, 32, 8)
        assert sum(1 for _ in container.decode(video=0)) == 9  # 1 s at 8 fps, plus the first frame
    thumbnail = Image.open(io.BytesIO(client.videos.download_content(video.id, variant="thumbnail").read()))
    assert thumbnail.format == "JPEG" and thumbnail.size == (48, 32)
    deleted = client.videos.delete(video.id)
    assert deleted.deleted and deleted.id == video.id
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)
    assert not (cluster.state_dirs["t2v"] / "artifacts" / video.id).exists()


def test_list_pages_with_a_cursor(cluster):
    client = openai_client(cluster)
    ids = [client.videos.create(prompt=f"clip {n}", extra_body={"num_inference_steps": 1}).id for n in range(3)]
    first = client.videos.list(limit=2, order="asc")
    page_ids = [video.id for video in first.data]
    assert len(page_ids) == 2 and first.has_more
    everything = [video.id for video in client.videos.list(limit=2, order="asc")]  # auto-pagination
    assert everything[: len(page_ids)] == page_ids
    assert set(ids) <= set(everything) and len(everything) == len(set(everything))


def test_frames_variant_equals_the_in_process_engine(cluster, tiny_pipeline):
    client = openai_client(cluster)
    fields = {"seed": 1234, "num_inference_steps": 4, "guidance_scale": 4.5, "negative_prompt": "blurry"}
    video = client.videos.create_and_poll(prompt="a bird over the sea", size="32x48", extra_body={**fields, "num_frames": 9})
    assert video.status == "completed"
    served = np.load(io.BytesIO(client.videos.download_content(video.id, variant="frames").read()))
    request = validate_generation(
        {"prompt": "a bird over the sea", "width": 32, "height": 48, "num_frames": 9, **fields}, tiny_pipeline.spec
    )
    expected = tiny_pipeline.generate(request).frames
    assert served.dtype == np.uint8 and served.shape == expected.shape == (9, 48, 32, 3)
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_image_to_video_through_multipart(cluster, tiny_i2v_pipeline):
    client = openai_client(cluster, "i2v")
    picture = image_bytes(40, 40, "PNG", seed=3)
    video = client.videos.create_and_poll(
        prompt="the cat turns its head", input_reference=("first.png", picture, "image/png"), size="32x32",
        extra_body={"seed": 77, "num_inference_steps": 3, "num_frames": 5},
    )
    assert video.status == "completed", video
    served = np.load(io.BytesIO(client.videos.download_content(video.id, variant="frames").read()))
    request = validate_generation(
        {"prompt": "the cat turns its head", "image": picture, "width": 32, "height": 32, "num_frames": 5,
         "seed": 77, "num_inference_steps": 3}, tiny_i2v_pipeline.spec,
    )
    expected = tiny_i2v_pipeline.generate(request).frames
    assert served.shape == expected.shape
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1


def test_post_processing_interpolates_and_upscales(cluster):
    client = openai_client(cluster)
    video = client.videos.create_and_poll(
        prompt="a river", size="32x32",
        extra_body={"num_frames": 9, "fps": 8, "num_inference_steps": 2, "interpolate_fps": 24, "upscale": 2},
    )
    assert video.status == "completed", video
    frames = np.load(io.BytesIO(client.videos.download_content(video.id, variant="frames").read()))
    assert frames.shape == (27, 64, 64, 3)  # 9 frames at 8 fps -> 27 at 24 fps, each side doubled
    with av.open(io.BytesIO(client.videos.download_content(video.id).read())) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (64, 64, 24)


def test_prompt_expansion_runs_the_llm_stage(cluster):
    client = openai_client(cluster, "i2v")
    before = metric_samples(cluster.url("i2v"))[("videoserve_stage_latency_seconds_count", (("stage", "prompt_expander"),))]
    video = client.videos.create_and_poll(
        prompt="a cat", input_reference=("a.png", image_bytes(32, 32), "image/png"),
        extra_body={"expand_prompt": "true", "num_inference_steps": 1, "num_frames": 1},
    )
    assert video.status == "completed"
    after = metric_samples(cluster.url("i2v"))[("videoserve_stage_latency_seconds_count", (("stage", "prompt_expander"),))]
    assert after == before + 1


def test_prompt_expansion_refused_where_no_llm_is_configured(cluster):
    response = httpx.post(f"{cluster.url('t2v')}/v1/videos", json={"prompt": "a cat", "expand_prompt": True})
    assert response.status_code == 400 and response.json()["error"]["param"] == "expand_prompt"


def test_server_sent_events_report_every_step(cluster):
    created = httpx.post(f"{cluster.url('t2v')}/v1/videos",
                         json={"prompt": "a dog", "size": "256x256", "num_frames": 17, "num_inference_steps": 20}).json()
    events = []
    with httpx.stream("GET", f"{cluster.url('t2v')}/v1/videos/{created['id']}/events", timeout=120) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line.split(":", 1)[1])))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "completed"
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress) and progress[-1] == 100
    steps = [data["step"] for _, data in events if data.get("stage") == "denoiser"]
    # Pushed as written: from the first step the stream saw, every step is there, once.
    assert steps and steps == list(range(steps[0], 21))
    assert all(data["total_steps"] == 20 for _, data in events)


def test_cancelling_a_running_job_stops_it_at_the_next_step(cluster):
    client = openai_client(cluster)
    base = cluster.url("t2v")
    video = client.videos.create(prompt="a long one", size=LONG_JOB["size"],
                                 extra_body={k: v for k, v in LONG_JOB.items() if k != "size"})
    running = wait_for(lambda: (v := client.videos.retrieve(video.id)).model_extra.get("step") and v)
    assert running.status == "in_progress" and running.model_extra["step"] < LONG_JOB["num_inference_steps"]
    client.videos.delete(video.id)
    time.sleep(1.0)  # let the step in flight finish
    steps = metric_samples(base)[("videoserve_denoise_steps_total", ())]
    time.sleep(2.0)
    assert metric_samples(base)[("videoserve_denoise_steps_total", ())] == steps  # no step ran after the cancel
    assert httpx.get(f"{base}/v1/videos/{video.id}").status_code == 404
    assert not (cluster.state_dirs["t2v"] / "artifacts" / video.id).exists()
    # The denoiser is free again.
    assert client.videos.create_and_poll(prompt="next", extra_body={"num_inference_steps": 1}).status == "completed"


class _WebhookReceiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        from standardwebhooks import Webhook

        body = self.rfile.read(int(self.headers["content-length"]))
        try:
            payload = Webhook(WEBHOOK_SECRET).verify(body, dict(self.headers))
            self.received.append(("verified", payload, dict(self.headers)))
            self.send_response(204)
        except Exception as error:  # a bad signature is what this receiver exists to catch
            self.received.append(("rejected", str(error), dict(self.headers)))
            self.send_response(401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_delivered_signed(cluster):
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _WebhookReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        video = openai_client(cluster).videos.create_and_poll(
            prompt="a webhook", extra_body={"num_inference_steps": 1, "webhook_url": url}
        )
        deliveries = wait_for(lambda: list(_WebhookReceiver.received), timeout=30)
    finally:
        receiver.shutdown()
    verdict, payload, headers = deliveries[0]
    assert verdict == "verified"
    assert payload["type"] == "video.completed" and payload["data"] == {"id": video.id}
    assert payload["object"] == "event" and payload["id"].startswith("evt_")
    assert isinstance(payload["created_at"], int)
    assert headers["webhook-id"]


def test_concurrent_requests_share_denoising_steps(cluster):
    base = cluster.url("t2v")
    before = metric_samples(base)
    client = openai_client(cluster)
    ids = [client.videos.create(prompt=f"a crowd {n}", size="64x64",
                                extra_body={"num_frames": 9, "num_inference_steps": 12, "seed": n}).id
           for n in range(4)]
    for video_id in ids:
        assert client.videos.poll(video_id, poll_interval_ms=100).status == "completed"
    after = metric_samples(base)
    single = ("videoserve_denoise_batch_size_bucket", (("le", "1.0"),))
    total = ("videoserve_denoise_batch_size_count", ())
    steps_in_batches = (after[total] - before[total]) - (after[single] - before[single])
    assert steps_in_batches > 0  # some steps ran more than one request


def test_repeated_prompts_hit_the_shared_text_cache(cluster):
    base = cluster.url("t2v")
    hits = ("videoserve_cache_hits_total", (("cache", "text_embeddings"),))
    misses = ("videoserve_cache_misses_total", (("cache", "text_embeddings"),))
    client = openai_client(cluster)
    first = client.videos.create_and_poll(prompt="a lighthouse in a storm, unique 7431",
                                          extra_body={"num_inference_steps": 1})
    before = metric_samples(base)
    second = client.videos.create_and_poll(prompt="a lighthouse in a storm, unique 7431",
                                           extra_body={"num_inference_steps": 1, "seed": 2})
    after = metric_samples(base)
    assert first.status == second.status == "completed"
    assert after[hits] - before[hits] == 2  # prompt and the default negative prompt
    assert after[misses] == before[misses]


def test_metrics_parse_and_contain_every_documented_metric(cluster):
    from prometheus_client.parser import text_string_to_metric_families

    from serve.metrics import METRICS

    # One job of its own, so the completed count below does not hang on earlier tests having run.
    video = openai_client(cluster).videos.create_and_poll(prompt="counted", extra_body={"num_inference_steps": 1})
    assert video.status == "completed"
    flicker = video.model_extra["quality"]["flicker"]  # measured on every finished video
    assert isinstance(flicker, float) and flicker >= 0
    text = httpx.get(f"{cluster.url('t2v')}/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (kind, _) in METRICS.items():
        family_name = name.removesuffix("_total") if kind == "counter" else name
        assert family_name in families, name
        assert families[family_name].type == kind
    completed = [s for s in families["videoserve_jobs"].samples if s.labels["status"] == "completed"]
    assert completed[0].value >= 1
    flickers = [s for s in families["videoserve_video_flicker"].samples
                if s.name == "videoserve_video_flicker_count" and s.labels["model"] == "tiny"]
    assert flickers and flickers[0].value >= 1


def test_every_stage_replica_count_follows_the_config(cluster):
    from ray import serve

    applications = serve.status().applications
    for app, expected in (("t2v", 1), ("i2v", 2)):
        for name, deployment in applications[app].deployments.items():
            running = deployment.replica_states.get("RUNNING", 0)
            assert running == (1 if name == "VideoAPI" else expected), (app, name, deployment.replica_states)
    assert set(applications["i2v"].deployments) == {
        "VideoAPI", "TextEncoder", "ImageConditioner", "Denoiser", "VaeDecoder", "PostProcessor", "PromptExpander"
    }


def test_stage_replicas_gauge_reports_serves_own_counts(cluster):
    from serve.deployment_defaults import DEFAULT_DEPLOYMENT_OPTIONS
    from serve.metrics import STAGE_DEPLOYMENTS, STAGES

    assert set(STAGE_DEPLOYMENTS) == set(STAGES)
    # Pipeline is the colocated layout's replica of every model stage; this app is disaggregated.
    assert set(STAGE_DEPLOYMENTS.values()) == set(DEFAULT_DEPLOYMENT_OPTIONS) - {"VideoAPI", "Pipeline"}
    replicas = "videoserve_stage_replicas"
    # The image-to-video app pins every stage to two replicas; its ingress reads that from Serve.
    i2v = metric_samples(cluster.url("i2v"))
    assert {stage: i2v[(replicas, (("stage", stage),))] for stage in STAGES} == {stage: 2.0 for stage in STAGES}
    # The text-to-video app autoscales from one; it has no image conditioner and no prompt expander.
    t2v = metric_samples(cluster.url("t2v"))
    assert t2v[(replicas, (("stage", "image_conditioner"),))] == t2v[(replicas, (("stage", "prompt_expander"),))] == 0
    assert all(t2v[(replicas, (("stage", stage),))] >= 1
               for stage in ("text_encoder", "denoiser", "vae_decoder", "post_processor"))


BAD_REQUESTS = [
    # description, request kwargs for httpx, expected status, expected param
    ("wrong type", dict(json={"prompt": "a", "seed": "abc"}), 400, "seed"),
    ("unknown field", dict(json={"prompt": "a", "colour": "red"}), 400, "colour"),
    ("size not a multiple of 16", dict(json={"prompt": "a", "size": "40x32"}), 400, "size"),
    ("size malformed", dict(json={"prompt": "a", "size": "big"}), 400, "size"),
    # Past the reach of the checkpoint's rotary table (1024 positions x the 2x2 patch x the 8x VAE).
    ("size too large", dict(json={"prompt": "a", "size": "16400x32"}), 400, "size"),
    ("frames not 4k+1", dict(json={"prompt": "a", "num_frames": 6}), 400, "num_frames"),
    ("seconds not whole frames", dict(json={"prompt": "a", "seconds": 0.3}), 400, "seconds"),
    ("too many steps", dict(json={"prompt": "a", "num_inference_steps": 500}), 400, "num_inference_steps"),
    ("missing prompt", dict(json={"size": "32x32"}), 400, "prompt"),
    ("not JSON", dict(content=b"{nope", headers={"content-type": "application/json"}), 400, None),
    ("JSON not an object", dict(json=[1, 2]), 400, None),
    ("unknown model", dict(json={"prompt": "a", "model": "sora-2"}), 404, "model"),
    ("bad webhook url", dict(json={"prompt": "a", "webhook_url": "ftp://x"}), 400, "webhook_url"),
    ("image to a text-to-video model", dict(files={"input_reference": ("a.png", image_bytes(32, 32), "image/png")},
                                            data={"prompt": "a"}), 400, "input_reference"),
    ("wrong content type", dict(content=b"prompt=a", headers={"content-type": "text/plain"}), 415, None),
    ("oversized body", dict(json={"prompt": "a" * 300_000}), 413, None),
]


@pytest.mark.parametrize("description,kwargs,status,param", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_input_gets_a_4xx_in_openai_shape(cluster, description, kwargs, status, param):
    base = cluster.url("t2v")
    response = httpx.post(f"{base}/v1/videos", **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    assert httpx.get(f"{base}/healthz").status_code == 200  # still serving


def test_non_image_upload_is_refused_for_image_to_video(cluster):
    base = cluster.url("i2v")
    response = httpx.post(f"{base}/v1/videos", data={"prompt": "a"},
                          files={"input_reference": ("a.png", b"not an image at all", "image/png")})
    assert response.status_code == 400 and response.json()["error"]["param"] == "input_reference"
    missing = httpx.post(f"{base}/v1/videos", data={"prompt": "a"})
    assert missing.status_code == 400 and "required" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/v1/videos/video_doesnotexist", 404),
        ("DELETE", "/v1/videos/video_doesnotexist", 404),
        ("GET", "/v1/videos/video_doesnotexist/content", 404),
        ("GET", "/v1/videos?limit=-1", 400),  # limit=0 is a page (empty, with has_more), as OpenAI's
        ("GET", "/v1/videos?order=sideways", 400),
        ("GET", "/v1/videos?after=video_doesnotexist", 404),
        ("GET", "/v1/nothing-here", 404),
    ],
)
def test_unknown_ids_and_bad_queries_get_a_4xx(cluster, method, path, status):
    response = httpx.request(method, f"{cluster.url('t2v')}{path}")
    assert response.status_code == status
    assert "error" in response.json()


@pytest.mark.parametrize("path", ["/v1/videos/..", "/v1/videos/../content", "/v1/videos/..%5C..%5Cetc",
                                  "/v1/videos/video_%2E%2E/content"])
def test_a_dot_dot_video_id_reaches_the_servers_id_check_and_is_unknown(cluster, path):
    # httpx (like every client library) normalises "../" away before sending, so a test
    # through it never reaches the server's id check; http.client sends the path as written.
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 404
    assert body["error"]["code"] == "not_found" and body["error"]["message"].startswith("no video with id")


def test_content_of_an_unfinished_video_is_a_conflict(cluster):
    client = openai_client(cluster)
    video = client.videos.create(prompt="slow", size=LONG_JOB["size"],
                                 extra_body={"num_frames": 33, "num_inference_steps": 40})
    response = httpx.get(f"{cluster.url('t2v')}/v1/videos/{video.id}/content")
    assert response.status_code == 409 and response.json()["error"]["code"] == "video_not_ready"
    bad_variant = httpx.get(f"{cluster.url('t2v')}/v1/videos/{video.id}/content?variant=gif")
    assert bad_variant.status_code == 400 and bad_variant.json()["error"]["param"] == "variant"
    client.videos.delete(video.id)


def test_models_and_health(cluster):
    models = httpx.get(f"{cluster.url('i2v')}/v1/models").json()
    assert [model["id"] for model in models["data"]] == ["tiny-i2v"]
    assert httpx.get(f"{cluster.url('t2v')}/healthz").json() == {"status": "ok", "models": ["tiny"]}


def test_generate_cli_against_the_server(cluster, tmp_path):
    output = tmp_path / "served.mp4"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "videoserve"), "generate", "--server", cluster.url("t2v"),
         "--prompt", "a train", "--steps", "2", "--seed", "5", "-o", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "seed 5" in result.stdout and "step 2/2" in result.stderr
    with av.open(str(output)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9


@pytest.mark.parametrize("deployment", ["Denoiser", "VideoAPI"])
def test_a_replica_killed_mid_job_loses_no_job_and_ends_none_twice(cluster, deployment):
    """ray.kill of the replica a running image-to-video job is on (the Denoiser, or the ingress
    that runs its job runner): the job still completes, once (one end-of-job event), with
    its webhook. The full table over every stage is benchmarks.fault_injection's."""
    import ray

    from serve.jobs.open_store import open_job_store
    from tests.support.images import image_bytes
    from tests.support.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver(WEBHOOK_SECRET)
    store = open_job_store(cluster.config["applications"][1]["args"]["storage"]["job_store_url"])
    base = cluster.url("i2v")
    try:
        created = httpx.post(f"{base}/v1/videos", timeout=30, files={
            "input_reference": ("first.png", image_bytes(32, 32, seed={"Denoiser": 11, "VideoAPI": 12}[deployment]), "image/png")},
            data={"prompt": f"survives losing its {deployment}", "size": "128x128", "num_frames": "33",
                  "num_inference_steps": "100", "seed": "4", "webhook_url": receiver.url})
        assert created.status_code == 200, created.text
        video_id = created.json()["id"]
        wait_for(lambda: httpx.get(f"{base}/v1/videos/{video_id}").json().get("stage") == "denoiser", timeout=120,
                 interval=0.02)
        replicas = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                    if actor["name"].startswith(f"SERVE_REPLICA::i2v#{deployment}")]
        for name in replicas:  # every replica: the job's is among them, wherever it was routed
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
        def ended():
            try:  # while Serve replaces a killed ingress, a request may hang or be refused
                video = httpx.get(f"{base}/v1/videos/{video_id}", timeout=10)
            except httpx.TransportError:
                return None
            return video.status_code == 200 and video.json()["status"] in ("completed", "failed") and video.json()

        finished = wait_for(ended, timeout=300, interval=0.5)
        assert finished["status"] == "completed", finished
        # The record's outbox holds the job's one ending; it is delivered, and nothing else was.
        outbox = wait_for(lambda: (o := store.get(video_id).webhook_outbox) and o.state == "delivered" and o,
                          timeout=60)
        events = {(d.payload["type"], d.headers["webhook-id"]) for d in receiver.deliveries if d.payload}
        assert events == {("video.completed", outbox.message_id)}
        assert store.get(video_id).attempts >= (2 if deployment == "VideoAPI" else 1)
    finally:
        receiver.close()
        store.close()


def test_a_job_accepted_before_a_full_restart_completes_after_it(cluster):
    from ray import serve

    from serve.cluster_launcher import deploy
    from serve.jobs.open_store import open_job_store
    from serve.jobs.store import JobStatus

    client = openai_client(cluster)
    video = client.videos.create(prompt="survives a restart", size=LONG_JOB["size"],
                                 extra_body={"num_frames": 33, "num_inference_steps": 30, "seed": 9})
    serve.shutdown()  # the whole app: proxies, controller, every replica
    store = open_job_store(f"sqlite:///{cluster.state_dirs['t2v'] / 'jobs.db'}")
    assert store.get(video.id).status is not JobStatus.COMPLETED
    store.close()
    # Bring the text-to-video application back (the image-to-video one is not needed here).
    deploy({**cluster.config, "applications": cluster.config["applications"][:1]}, timeout_s=600)
    finished = client.videos.poll(video.id, poll_interval_ms=200)
    assert finished.status == "completed"
    assert finished.model_extra["seed"] == 9
    assert len(client.videos.download_content(video.id).read()) > 0


def test_remix_keeps_the_source_parameters_and_the_spritesheet_shows_the_delivered_frames(cluster):
    client = openai_client(cluster)
    source = client.videos.create_and_poll(
        prompt="a paper boat", size="32x32",
        extra_body={"seed": 31, "num_inference_steps": 2, "num_frames": 9, "fps": 8, "interpolate_fps": 24,
                    "upscale": 2},
    )
    assert source.status == "completed", source
    # The delivered clip: 9 frames at 8 fps -> 27 at 24 fps, each side doubled.
    assert (source.size, source.seconds) == ("64x64", f"{(27 - 1) / 24:g}")
    sheet = Image.open(io.BytesIO(client.videos.download_content(source.id, variant="spritesheet").read()))
    assert (sheet.format, sheet.size) == ("JPEG", (5 * 64, 2 * 64))  # 10 of the 27 frames, five to a row

    remix = client.videos.remix(source.id, prompt="a paper boat in the rain")
    assert remix.id != source.id and remix.remixed_from_video_id == source.id
    assert remix.prompt == "a paper boat in the rain" and remix.model_extra["seed"] == 31
    assert (remix.size, remix.seconds) == (source.size, source.seconds)
    finished = client.videos.poll(remix.id, poll_interval_ms=200)
    # The runner's own metadata writes (step times, delivered shape) keep the remix's source.
    assert finished.status == "completed" and finished.remixed_from_video_id == source.id
    assert (finished.size, finished.seconds) == (source.size, source.seconds)
    frames = np.load(io.BytesIO(client.videos.download_content(remix.id, variant="frames").read()))
    assert frames.shape == (27, 64, 64, 3)
