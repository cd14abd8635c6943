"""OpenAI Videos API parity in-process: remix, ``limit=0``, the delivered ``size``/``seconds``,
the ``spritesheet`` variant, and OpenAI-shaped refusals of the routes this server lacks.

The app is ``create_api()`` in front of a real VideoService on a real SQLite job store, reached
through httpx's ASGITransport, mostly by the official ``openai`` SDK. No job runner is attached:
a test completes a job as the runner does, running the real PostProcessor into the job's
artifact directory and writing what it delivered onto the record.
"""

from __future__ import annotations

import asyncio
import io
import math

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from engine.post_processing.post_processor import PostProcessOptions, PostProcessor
from engine.post_processing.thumbnail import spritesheet_layout
from engine.stage_types import Frames
from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import VARIANT_FILES, ArtifactStore
from serve.jobs.sqlite_store import SqliteJobStore
from serve.jobs.store import JobStatus
from serve.metrics import VideoServeMetrics
from serve.video_service import VideoService

BASE_URL = "http://testserver"
ERROR_FIELDS = ("message", "type", "param", "code")


@pytest.fixture
def served(tmp_path, tiny_spec, tiny_i2v_spec):
    config = AppConfig(storage={"state_dir": str(tmp_path)})
    store = SqliteJobStore(tmp_path / "jobs.db")
    metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
    api = create_api()
    api.state.service = VideoService(config, {tiny_spec.name: tiny_spec, tiny_i2v_spec.name: tiny_i2v_spec}, store,
                                     ArtifactStore(tmp_path / "artifacts"), metrics, runner=None,
                                     expander_enabled=False)
    yield api
    store.close()


def _run(api, test):
    """Run ``test(http, sdk)`` against the app: an httpx client and an AsyncOpenAI over it."""

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE_URL) as http:
            sdk = openai.AsyncOpenAI(api_key="unused", base_url=f"{BASE_URL}/v1", http_client=http, max_retries=0)
            return await test(http, sdk)

    return asyncio.run(main())


def _complete(service: VideoService, job_id: str) -> dict:
    """Finish a job as the runner does: the real post-processing of its decoded frames, then the record."""
    job = service.store.get(job_id).spec
    generation, options = job.generation, job.post_processing
    frames = _frames(generation.num_frames, generation.height, generation.width)
    output_dir = service.artifacts.job_dir(job_id)
    result = PostProcessor().process(Frames(job_id, frames, generation.fps),
                                     PostProcessOptions(interpolate_fps=options.interpolate_fps,
                                                        upscale=options.upscale),
                                     output_dir)
    service.store.update(
        job_id, status=JobStatus.COMPLETED, progress=100,
        artifacts={variant: str(output_dir / name) for variant, name in VARIANT_FILES.items()},
        metadata={"num_frames": result.num_frames, "width": result.width, "height": result.height,
                  "fps": result.fps},
    )
    return {"num_frames": result.num_frames, "width": result.width, "height": result.height, "fps": result.fps}


def _frames(count: int, height: int, width: int) -> np.ndarray:
    # Frame i is one flat grey, so each sprite-sheet tile says which frame it shows.
    greys = np.linspace(0, 250, count).astype(np.uint8)
    return np.broadcast_to(greys[:, None, None, None], (count, height, width, 3)).copy()


def _png(width: int = 32, height: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _openai_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert tuple(error) == ERROR_FIELDS and error["code"] == code and error["type"] == "invalid_request_error"
    return error


# --- remix -------------------------------------------------------------------------------


def test_remix_is_a_new_job_with_the_source_parameters_and_seed_and_a_new_prompt(served):
    service = served.state.service

    async def test(http, sdk):
        source = await sdk.videos.create(prompt="a lighthouse at dawn", seconds="1", extra_body={
            "fps": 8, "seed": 1234, "num_inference_steps": 2, "guidance_scale": 3.5, "interpolate_fps": 24,
            "upscale": 2, "negative_prompt": "fog"})
        _complete(service, source.id)
        remix = await sdk.videos.remix(source.id, prompt="a lighthouse at dusk")
        retrieved = await sdk.videos.retrieve(remix.id)
        return await sdk.videos.retrieve(source.id), remix, retrieved

    source, remix, retrieved = _run(served, test)
    assert remix.id != source.id and remix.status == "queued" and remix.progress == 0
    assert remix.remixed_from_video_id == source.id == retrieved.remixed_from_video_id
    assert source.remixed_from_video_id is None
    assert (remix.prompt, remix.model, remix.seed) == ("a lighthouse at dusk", "tiny", 1234)
    # The same delivered clip: predicted for the queued remix, measured for the completed source.
    assert (remix.size, remix.seconds) == (source.size, source.seconds) == ("64x64", f"{(27 - 1) / 24:g}")
    old, new = (service.store.get(video_id).spec for video_id in (source.id, remix.id))
    assert new.generation == old.generation.model_copy(update={"prompt": "a lighthouse at dusk"})
    assert (new.post_processing, new.model, new.task) == (old.post_processing, old.model, old.task)
    assert service.store.get(remix.id).metadata["remixed_from_video_id"] == source.id


def test_remix_of_an_image_to_video_clip_keeps_its_input_image(served):
    service = served.state.service
    image = _png()

    async def test(http, sdk):
        response = await http.post("/v1/videos", data={"prompt": "a cat", "model": "tiny-i2v"},
                                   files={"input_reference": ("cat.png", image, "image/png")})
        assert response.status_code == 200, response.text
        _complete(service, response.json()["id"])
        return response.json()["id"], await sdk.videos.remix(response.json()["id"], prompt="a cat, jumping")

    source_id, remix = _run(served, test)
    record = service.store.get(remix.id)
    assert (record.model, record.spec.task.value) == ("tiny-i2v", "i2v")
    assert record.input_image_path != service.store.get(source_id).input_image_path
    assert open(record.input_image_path, "rb").read() == image


@pytest.mark.parametrize("encoding", ["multipart", "urlencoded"])
def test_remix_takes_its_prompt_as_a_form_too(served, encoding):
    service = served.state.service

    async def test(http, sdk):
        source = await sdk.videos.create(prompt="waves")
        _complete(service, source.id)
        form = {"files": {"prompt": (None, "bigger waves")}} if encoding == "multipart" else {
            "data": {"prompt": "bigger waves"}}
        return source.id, await http.post(f"/v1/videos/{source.id}/remix", **form)

    source_id, response = _run(served, test)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["prompt"], body["remixed_from_video_id"], body["status"]) == ("bigger waves", source_id, "queued")
    assert response.headers["openai-poll-after-ms"]


def test_remix_refuses_a_missing_or_unfinished_source_and_bad_bodies(served):
    service = served.state.service

    async def test(http, sdk):
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.videos.remix("video_doesnotexist", prompt="x")
        queued = await sdk.videos.create(prompt="still queued")
        with pytest.raises(openai.ConflictError) as unfinished:
            await sdk.videos.remix(queued.id, prompt="x")
        done = await sdk.videos.create(prompt="done")
        _complete(service, done.id)
        path = f"/v1/videos/{done.id}/remix"
        return missing.value, unfinished.value, [
            await http.post(path, json={"prompt": "x", "seed": 3}),
            await http.post(path, json={}),
            await http.post(path, json={"prompt": ""}),
            await http.post(path, data={"prompt": "x"}, files={"input_reference": ("a.png", _png(), "image/png")}),
            await http.post(path, content=b"prompt", headers={"content-type": "text/plain"}),
        ]

    missing, unfinished, (extra, no_prompt, empty, with_image, plain) = _run(served, test)
    assert missing.status_code == 404 and missing.code == "not_found"
    assert unfinished.status_code == 409 and unfinished.code == "video_not_ready"
    assert "queued" in unfinished.message
    assert _openai_error(extra, 400, "invalid_value")["param"] == "seed"
    assert _openai_error(no_prompt, 400, "invalid_value")["param"] == "prompt"
    assert _openai_error(empty, 400, "invalid_value")["param"] == "prompt"
    assert _openai_error(with_image, 400, "invalid_value")["param"] == "input_reference"
    _openai_error(plain, 415, "unsupported_media_type")
    assert service.store.count_by_status()[JobStatus.QUEUED] == 1  # only the "still queued" job


# --- list limit=0 ------------------------------------------------------------------------


def test_list_with_limit_zero_returns_no_items_and_says_whether_any_remain(served):
    async def test(http, sdk):
        empty = await sdk.videos.list(limit=0)
        first = await sdk.videos.create(prompt="one")
        second = await sdk.videos.create(prompt="two")
        some = await sdk.videos.list(limit=0)
        after_newest = await sdk.videos.list(limit=0, after=second.id)
        after_oldest = await sdk.videos.list(limit=0, after=first.id)
        refused = await http.get("/v1/videos", params={"limit": -1})
        return empty, some, after_newest, after_oldest, refused

    empty, some, after_newest, after_oldest, refused = _run(served, test)
    assert (empty.data, empty.has_more) == ([], False)
    assert (some.data, some.has_more) == ([], True)
    assert (after_newest.data, after_newest.has_more) == ([], True)  # newest first: the oldest remains
    assert (after_oldest.data, after_oldest.has_more) == ([], False)
    assert _openai_error(refused, 400, "invalid_value")["param"] == "limit"


# --- size and seconds of the delivered clip -----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "size", "frames_and_fps"),
    [
        ({}, "32x32", (9, 16)),
        ({"upscale": 2}, "64x64", (9, 16)),
        ({"fps": 8, "interpolate_fps": 24}, "32x32", (math.ceil(9 * 24 / 8), 24)),
        ({"fps": 8, "num_frames": 5, "interpolate_fps": 30, "upscale": 4}, "128x128", (math.ceil(5 * 30 / 8), 30)),
    ],
)
def test_size_and_seconds_describe_the_delivered_clip_before_and_after_it_is_made(served, extra, size,
                                                                                  frames_and_fps):
    service = served.state.service

    async def test(http, sdk):
        queued = await sdk.videos.create(prompt="a kite", extra_body=extra)
        delivered = _complete(service, queued.id)
        return queued, delivered, await sdk.videos.retrieve(queued.id)

    queued, delivered, completed = _run(served, test)
    frames, fps = frames_and_fps
    # The duration convention of the request's ``seconds``: (frames - 1) / fps.
    expected = (size, f"{(frames - 1) / fps:g}")
    assert (delivered["num_frames"], delivered["fps"]) == frames_and_fps
    assert f"{delivered['width']}x{delivered['height']}" == size
    assert (queued.size, queued.seconds) == expected == (completed.size, completed.seconds)
    assert completed.status == "completed"


def test_a_completed_video_reads_its_size_and_seconds_from_what_was_written(served):
    service = served.state.service

    async def test(http, sdk):
        video = await sdk.videos.create(prompt="a kite")
        service.store.update(video.id, status=JobStatus.COMPLETED,
                             metadata={"num_frames": 41, "width": 48, "height": 80, "fps": 20})
        return await sdk.videos.retrieve(video.id)

    completed = _run(served, test)
    assert (completed.size, completed.seconds) == ("48x80", "2")


# --- the spritesheet variant --------------------------------------------------------------


def test_the_sdk_downloads_the_spritesheet_of_the_delivered_frames(served):
    service = served.state.service

    async def test(http, sdk):
        video = await sdk.videos.create(prompt="a kite", extra_body={"num_frames": 17, "upscale": 2})
        with pytest.raises(openai.ConflictError):  # not made yet
            await sdk.videos.download_content(video.id, variant="spritesheet")
        _complete(service, video.id)
        sheet = await sdk.videos.download_content(video.id, variant="spritesheet")
        thumbnail = await sdk.videos.download_content(video.id, variant="thumbnail")
        unknown = await http.get(f"/v1/videos/{video.id}/content", params={"variant": "poster"})
        return sheet, thumbnail, unknown

    sheet, thumbnail, unknown = _run(served, test)
    assert sheet.response.headers["content-type"] == "image/jpeg"
    assert sheet.response.headers["content-disposition"].endswith('.jpg"')
    image = Image.open(io.BytesIO(sheet.content))
    layout = spritesheet_layout(17, 64, 64)  # the delivered (upscaled) frames
    assert (image.format, image.size) == ("JPEG", layout.size) == ("JPEG", (5 * 64, 2 * 64))
    assert len(layout.frame_indices) == 10 and layout.frame_indices[-1] == 16
    assert sheet.content != thumbnail.content
    assert "spritesheet" in _openai_error(unknown, 400, "invalid_value")["message"]


# --- routes this server does not have ------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "feature"),
    [
        ("POST", "/v1/videos/edits", "edits"),
        ("POST", "/v1/videos/extensions", "extensions"),
        ("POST", "/v1/videos/video_123/edits", "edits"),
        ("POST", "/v1/videos/video_123/extensions", "extensions"),
        ("POST", "/v1/videos/characters", "characters"),
        ("GET", "/v1/videos/characters", "characters"),
        ("GET", "/v1/videos/characters/char_123", "characters"),
        ("DELETE", "/v1/videos/characters/char_123", "characters"),
    ],
)
def test_openai_routes_this_server_lacks_are_named_in_an_openai_shaped_404(served, method, path, feature):
    response = _run(served, lambda http, sdk: http.request(method, path, json={"prompt": "x"}))
    error = _openai_error(response, 404, "unsupported_endpoint")
    assert f"'{feature}' is not supported by this server" in error["message"] and error["param"] is None


def test_the_sdk_sees_unsupported_endpoints_as_not_found_with_their_code(served):
    async def test(http, sdk):
        errors = []
        clip = ("clip.mp4", b"not really a video", "video/mp4")
        for call in (lambda: sdk.videos.edit(prompt="x", video=clip),
                     lambda: sdk.videos.extend(prompt="x", seconds="4", video=clip),
                     lambda: sdk.videos.get_character("char_123")):
            with pytest.raises(openai.NotFoundError) as error:
                await call()
            errors.append(error.value)
        return errors

    for error in _run(served, test):
        assert error.code == "unsupported_endpoint" and "is not supported by this server" in error.message


@pytest.mark.parametrize(("method", "path"), [("PUT", "/v1/videos"), ("PATCH", "/v1/videos/video_123"),
                                              ("GET", "/v1/videos/video_123/remix")])
def test_a_wrong_method_on_a_known_route_answers_in_openai_shape(served, method, path):
    response = _run(served, lambda http, sdk: http.request(method, path))
    _openai_error(response, 405, "method_not_allowed")
