"""No input reaches a 500: POST /v1/videos against the inputs that used to, and their neighbours.

In process, over httpx's ASGI transport: the app the ingress serves (``create_api``) in front
of a real VideoService on a SQLite job store in tmp_path, with no job runner, so accepted
jobs stay queued. Every refusal is a 4xx in OpenAI's error shape that names the field.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import zlib

import httpx
import pytest

from serve.api.create_request import MAX_JSON_DEPTH
from serve.api.routes import create_api
from serve.app_config import ApiConfig, AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.open_store import open_job_store
from serve.metrics import VideoServeMetrics
from serve.video_service import VideoService
from tests.support.images import image_bytes

MAX_BODY = 64 * 1024
ANY = object()  # refused(): any param


@pytest.fixture
def app(tmp_path, tiny_spec, tiny_i2v_spec):
    config = AppConfig(storage={"state_dir": str(tmp_path)}, api={"max_request_bytes": MAX_BODY})
    return _app(config, [tiny_spec, tiny_i2v_spec])


def _app(config: AppConfig, specs):
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
    api = create_api()
    api.state.service = VideoService(config, {spec.name: spec for spec in specs}, store,
                                     ArtifactStore(config.storage.resolved_artifact_dir()), metrics, runner=None,
                                     expander_enabled=False)
    return api


def send(app, method: str = "POST", path: str = "/v1/videos", **kwargs) -> httpx.Response:
    async def request():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(request())


def post_json_text(app, text: str | bytes) -> httpx.Response:
    return send(app, content=text, headers={"Content-Type": "application/json"})


def refused(response: httpx.Response, status: int = 400, *, param: str | None | object = ANY, code: str | None = None,
            words: tuple[str, ...] = ()) -> dict:
    """The error of a refusal, checked: its status, OpenAI's shape, the field named."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"] and error["type"] == "invalid_request_error"
    assert param is ANY or error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    for word in words:
        assert word in error["message"], error
    return error


def png_claiming(width: int, height: int) -> bytes:
    """A 16x16 PNG whose IHDR says ``width`` x ``height`` (its CRC fixed, so the header parses)."""
    data = bytearray(image_bytes(16, 16, "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# --- strict JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_json_constants_and_overflowing_numbers_are_invalid_json(app, number):
    response = post_json_text(app, f'{{"prompt": "x", "seconds": {number}}}')
    refused(response, param=None, code="invalid_json",
            words=("out of range",) if "e" in number else ("no NaN or Infinity",))


@pytest.mark.parametrize("field", ["seconds", "guidance_scale", "flow_shift", "seed", "num_frames", "fps",
                                   "interpolate_fps", "upscale", "num_inference_steps"])
@pytest.mark.parametrize("number", ["1e308", str(10**400), "-1", "-1e-320"])
def test_numbers_out_of_every_fields_range_name_the_field(app, field, number):
    response = post_json_text(app, f'{{"prompt": "x", "{field}": {number}}}')
    refused(response, param=field)


def test_an_integer_too_long_to_convert_is_invalid_json(app):
    refused(post_json_text(app, '{"prompt": "x", "seed": ' + "9" * 5000 + "}"), code="invalid_json",
            words=("5000 digits",))


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 10_000])
@pytest.mark.parametrize("where", ["body", "field"])
def test_deeply_nested_json_is_invalid_json(app, depth, where):
    if where == "body":
        text = '{"a":' * depth + "1" + "}" * depth
    else:
        text = '{"prompt": "x", "extra": ' + "[" * depth + "]" * depth + "}"
    refused(post_json_text(app, text), code="invalid_json", words=(f"nested more than {MAX_JSON_DEPTH}",))


def test_a_lone_surrogate_is_invalid_json(app):
    refused(post_json_text(app, '{"prompt": "a \\ud800 b"}'), code="invalid_json", words=("surrogate",))


@pytest.mark.parametrize("text", ["", "null", "[]", '"prompt"', "{", '{"prompt": "x",}', b"\xff\xfe\x00"])
def test_bodies_that_are_no_json_object_are_invalid_json(app, text):
    refused(post_json_text(app, text), code="invalid_json")


@pytest.mark.parametrize(
    "field,value",
    [("prompt", 5), ("prompt", None), ("seed", "5"), ("seed", 1.5), ("num_frames", True), ("fps", [16]),
     ("upscale", {"x": 2}), ("expand_prompt", 1), ("expand_prompt", "true"), ("seconds", True), ("seconds", "four"),
     ("size", 832), ("model", ["tiny"]), ("input_reference", "data:image/png;base64,AAAA"),
     ("input_reference", {"image_url": 5})],
)
def test_wrong_types_are_refused_naming_the_field(app, field, value):
    error = refused(send(app, json={"prompt": "x", field: value}))
    assert error["param"].split(".")[0] == field


def test_unknown_fields_are_refused_naming_them(app):
    error = refused(send(app, json={"prompt": "x", "colour": "red"}), param="colour", words=("not a known field",))
    assert error["code"] == "invalid_value"
    refused(send(app, json={"prompt": "x", "input_reference": {"url": "data:"}}), param="input_reference.url")


def test_a_missing_prompt_is_named(app):
    refused(send(app, json={"seconds": 1}), param="prompt")


@pytest.mark.parametrize("seconds", ["1", 1, 1.0, "0.5"])
def test_seconds_as_a_number_or_as_the_sdk_sends_it(app, seconds):
    response = send(app, json={"prompt": "x", "seconds": seconds})
    assert response.status_code == 200, response.text


def test_a_seconds_string_that_is_no_number_is_named(app):
    refused(send(app, json={"prompt": "x", "seconds": "nan"}), param="seconds")
    refused(send(app, data={"prompt": "x", "seconds": "1e999"}), param="seconds")


# --- content types, multipart, lengths ------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/merge-patch+json",
                                          "application/octet-stream", "image/png", "json", ""])
def test_other_content_types_are_415(app, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    refused(send(app, content=b'{"prompt": "x"}', headers=headers), 415, code="unsupported_media_type")


def test_no_content_type_is_415(app):
    refused(send(app, content=b'{"prompt": "x"}'), 415, code="unsupported_media_type")


def test_every_accepted_content_type_creates(app):
    for kwargs in ({"json": {"prompt": "x"}}, {"data": {"prompt": "x"}}, {"data": {"prompt": "x"}, "files": {}},
                   {"files": {"prompt": (None, "x")}}):
        response = send(app, **kwargs)
        assert response.status_code == 200, (kwargs, response.text)
    charset = send(app, content=b'{"prompt": "x"}', headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200, charset.text


def test_form_values_are_read_leniently_but_still_bounded(app):
    accepted = send(app, data={"prompt": "x", "num_frames": "13", "seed": "7", "expand_prompt": "false"})
    assert accepted.status_code == 200, accepted.text
    refused(send(app, data={"prompt": "x", "seed": "-1"}), param="seed")
    refused(send(app, data={"prompt": "x", "num_frames": "many"}), param="num_frames")
    refused(send(app, data={"prompt": "x", "guidance_scale": "nan"}), param="guidance_scale")
    refused(send(app, data={"prompt": "x", "colour": "red"}), param="colour")
    twice = send(app, content=b"prompt=x&prompt=y", headers={"Content-Type": "application/x-www-form-urlencoded"})
    refused(twice, param="prompt", words=("more than once",))


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("multipart/form-data", b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--x--\r\n'),
        ("multipart/form-data; boundary=abc", b'--x\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx\r\n--x--'),
        ("multipart/form-data; boundary=abc", b"\x00\xff garbage \r\n\r\n--abc"),
        ("multipart/form-data; boundary=abc", b'--abc\r\nContent-Disposition: form-data\r\n\r\nx\r\n--abc--\r\n'),
        ("multipart/form-data; boundary=abc", b"--abc\r\nbroken header line\r\n\r\nx\r\n--abc--\r\n"),
        ("multipart/form-data; boundary=" + "b" * 200, b"--" + b"b" * 200 + b"\r\n"),
        ("multipart/form-data; boundary=\"\"", b"----\r\n"),
    ],
    ids=["missing-boundary", "wrong-boundary", "garbage", "part-without-name", "bad-part-header", "long-boundary",
         "empty-boundary"],
)
def test_malformed_multipart_is_400(app, content_type, body):
    response = send(app, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_file_in_another_field_is_refused(app):
    refused(send(app, data={"prompt": "x"}, files={"seed": ("s.txt", b"5")}), param="seed", words=("not a file",))


def test_a_chunked_body_past_the_limit_is_413(app):
    async def chunks():
        yield b'{"prompt": "'
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"x" * 1024
        yield b'"}'

    response = send(app, content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    refused(response, 413, code="request_too_large")


def test_a_declared_length_past_the_limit_is_413_before_reading(app):
    response = send(app, content=b'{"prompt": "x"}',
                    headers={"Content-Type": "application/json", "Content-Length": str(MAX_BODY + 1)})
    refused(response, 413, code="request_too_large")


@pytest.mark.parametrize("declared", ["3", "100", "-1", "abc", "1e3", "99999999999999999999999"])
def test_a_content_length_that_lies_is_400(app, declared):
    response = send(app, content=b'{"prompt": "x"}', headers={"Content-Type": "application/json",
                                                             "Content-Length": declared})
    assert response.status_code in (400, 413), response.text
    refused(response, response.status_code)


# --- the input image ------------------------------------------------------------------------------


def test_an_image_as_a_data_url_in_json(app):
    response = send(app, json={"model": "tiny-i2v", "prompt": "x",
                               "input_reference": {"image_url": data_url(image_bytes(32, 32))}})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("encoding", ["bracketed", "json-text", "file"])
def test_an_image_in_a_form_as_the_sdk_and_curl_send_it(app, encoding):
    image = image_bytes(32, 32, "JPEG")
    fields = {"model": "tiny-i2v", "prompt": "x"}
    files = None
    if encoding == "bracketed":
        fields["input_reference[image_url]"] = data_url(image, "image/jpeg")
    elif encoding == "json-text":
        fields["input_reference"] = json.dumps({"image_url": data_url(image, "image/jpeg")})
    else:
        files = {"input_reference": ("frame.jpg", image, "image/jpeg")}
    response = send(app, data=fields, files=files)
    assert response.status_code == 200, response.text


def test_an_image_given_twice_is_refused(app):
    image = image_bytes(32, 32)
    response = send(app, data={"model": "tiny-i2v", "prompt": "x", "input_reference[image_url]": data_url(image)},
                    files={"input_reference": ("f.png", image, "image/png")})
    refused(response, param="input_reference", words=("more than once",))


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/frame.png", "https://example.com/a.png", "file:///etc/passwd",
                                 "ftp://x/y", "//example.com/a.png", "frame.png"])
def test_only_data_urls_are_accepted_and_nothing_is_fetched(app, url):
    for kwargs in ({"json": {"model": "tiny-i2v", "prompt": "x", "input_reference": {"image_url": url}}},
                   {"data": {"model": "tiny-i2v", "prompt": "x", "input_reference[image_url]": url}}):
        refused(send(app, **kwargs), param="input_reference", words=("only data: URLs are accepted",))


@pytest.mark.parametrize(
    "url,words",
    [("data:image/png,abc", ("base64",)), ("data:image/png;base64,***", ("not valid base64",)),
     ("data:image/gif;base64,R0lGODlh", ("image/png",)), ("data:text/plain;base64,AAAA", ("image/png",)),
     ("data:image/png;base64", ("no ','",)),
     (data_url(image_bytes(32, 32, "JPEG"), "image/png"), ("holds a JPEG",))],
    ids=["not-base64", "bad-base64", "gif-type", "text-type", "no-comma", "type-mismatch"],
)
def test_bad_data_urls_are_refused(app, url, words):
    refused(send(app, json={"model": "tiny-i2v", "prompt": "x", "input_reference": {"image_url": url}}),
            param="input_reference", words=words)


def test_file_ids_are_refused(app):
    refused(send(app, json={"model": "tiny-i2v", "prompt": "x", "input_reference": {"file_id": "file_1"}}),
            param="input_reference", code="unsupported")


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_formats_outside_the_allowlist_are_refused_from_their_magic_bytes(app, image_format):
    files = {"input_reference": ("frame", image_bytes(32, 32, image_format), "image/png")}
    refused(send(app, data={"model": "tiny-i2v", "prompt": "x"}, files=files), param="input_reference",
            code="invalid_image_format", words=(f"got {image_format}",))


@pytest.mark.parametrize("width,height,words", [(30000, 30000, ("too large to decode",)),
                                                (5000, 5000, ("5000x5000", "max_input_image_pixels"))])
def test_an_image_bomb_is_refused_from_its_header(app, width, height, words):
    bomb = png_claiming(width, height)
    assert len(bomb) < 2000
    for kwargs in ({"files": {"input_reference": ("bomb.png", bomb, "image/png")}},
                   {"data": {"input_reference[image_url]": data_url(bomb)}}):
        kwargs["data"] = {"model": "tiny-i2v", "prompt": "x", **kwargs.get("data", {})}
        refused(send(app, **kwargs), param="input_reference", code="image_too_large", words=words)


def test_the_pixel_limit_is_the_configs(tmp_path, tiny_i2v_spec):
    config = AppConfig(storage={"state_dir": str(tmp_path)}, api={"max_input_image_pixels": 1000})
    response = send(_app(config, [tiny_i2v_spec]), json={"prompt": "x",
                                                        "input_reference": {"image_url": data_url(image_bytes(32, 32))}})
    refused(response, param="input_reference", code="image_too_large", words=("1,024 pixels", "1,000"))


@pytest.mark.parametrize("image", [image_bytes(32, 32)[:60], image_bytes(32, 32)[:300], b"\x89PNG\r\n\x1a\n",
                                   b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, b"\xff\xd8\xff" + b"\x00" * 50,
                                   b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"", b"not an image"],
                         ids=["truncated-60", "truncated-300", "magic-only", "png-zeros", "jpeg-zeros", "webp-stub",
                              "empty", "text"])
def test_truncated_or_garbage_images_are_refused(app, image):
    files = {"input_reference": ("frame.png", image, "image/png")}
    refused(send(app, data={"model": "tiny-i2v", "prompt": "x"}, files=files), param="input_reference")


def test_an_image_is_refused_by_a_text_to_video_model_naming_the_field(app):
    response = send(app, json={"model": "tiny", "prompt": "x",
                               "input_reference": {"image_url": data_url(image_bytes(32, 32))}})
    refused(response, param="input_reference", words=("text-to-video",))


# --- the joint bound on output work -----------------------------------------------------------------


@pytest.fixture
def small_output_app(tmp_path, tiny_spec):
    # tiny's default: 32x32 x 9 frames at 16 fps = 9,216 pixel-frames
    config = AppConfig(storage={"state_dir": str(tmp_path)}, api={"max_output_pixel_frames": 40_000})
    return _app(config, [tiny_spec])


@pytest.mark.parametrize(
    "fields,param,delivered",
    [({"upscale": 3}, "upscale", "96x96 x 9 frames"),
     ({"interpolate_fps": 120}, "interpolate_fps", "32x32 x 68 frames"),
     ({"interpolate_fps": 32, "upscale": 2}, "upscale", "64x64 x 18 frames"),
     ({"size": "256x256"}, "size", "256x256 x 9 frames"),
     ({"num_frames": 41}, "num_frames", "32x32 x 41 frames"),
     ({"seconds": 3}, "seconds", "32x32 x 49 frames")],
)
def test_the_joint_output_bound_names_the_field_most_responsible(small_output_app, fields, param, delivered):
    response = send(small_output_app, json={"prompt": "x", **fields})
    refused(response, param=param, code="output_too_large", words=(delivered, "40,000", "max_output_pixel_frames"))


def test_output_under_the_joint_bound_is_accepted(small_output_app):
    for fields in ({"upscale": 2}, {"interpolate_fps": 32}, {"upscale": 2, "interpolate_fps": 17, "num_frames": 5}):
        response = send(small_output_app, json={"prompt": "x", **fields})
        assert response.status_code == 200, (fields, response.text)


def test_the_default_output_bound_passes_every_presets_default_with_interpolation_and_upscale_x2():
    from engine.models.model_registry import HUB_PRESETS
    from engine.post_processing.post_processor import delivered_shape

    limit = ApiConfig().max_output_pixel_frames
    for name, preset in HUB_PRESETS.items():
        defaults = preset.defaults
        frames, width, height, _ = delivered_shape(defaults.num_frames, defaults.width, defaults.height, defaults.fps,
                                                   interpolate_fps=2 * defaults.fps, upscale=2)
        assert frames * width * height <= limit, name


# --- the rest of the API --------------------------------------------------------------------------


def test_an_unexpected_error_answers_a_fixed_500_and_logs_the_traceback(app, caplog):
    @app.get("/boom")
    async def boom():
        raise RuntimeError("secret: /var/lib/videoserve/jobs.db at 10.0.0.7")

    with caplog.at_level("ERROR", logger="serve.api.errors"):
        response = send(app, "GET", "/boom")
    assert response.status_code == 500
    assert response.json() == {"error": {"message": "internal server error", "type": "server_error", "param": None,
                                         "code": "internal_error"}}
    assert "secret" in caplog.text and "Traceback" in caplog.text


def test_the_create_route_declares_its_body_for_openapi(app):
    operation = send(app, "GET", "/openapi.json").json()["paths"]["/v1/videos"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data", "application/x-www-form-urlencoded"}
    assert "$ref" not in json.dumps(content)
    json_schema = content["application/json"]["schema"]
    assert json_schema["required"] == ["prompt"] and json_schema["additionalProperties"] is False
    assert json_schema["properties"]["input_reference"]["anyOf"][0]["properties"]["image_url"]
    assert content["multipart/form-data"]["schema"]["properties"]["input_reference"]["format"] == "binary"


def test_a_wrong_method_is_405_in_openai_shape(app):
    response = send(app, "PUT", "/v1/videos", json={})
    refused(response, 405, code="method_not_allowed")
    assert "allow" in response.headers
