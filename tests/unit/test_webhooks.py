"""Signed webhooks, delivered to a real HTTP receiver on 127.0.0.1 that verifies each one."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from serve.webhooks import (
    VIDEO_COMPLETED,
    VIDEO_FAILED,
    WebhookSender,
    WebhookSettings,
    configured_webhook_secret,
    generate_webhook_secret,
    retry_after_s,
    retry_delay_s,
    validate_webhook_url,
)

SECRET = generate_webhook_secret()
JOB_DATA = {"job_id": "job-42", "status": "completed", "video_url": "http://127.0.0.1/videos/job-42.mp4"}


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Hold the answer until the test ends: the sender's read timeout fires first.
    hold: bool = False


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    payload: Any | None  # what verify() returned; None when verification failed
    verification_error: str | None
    arrived_at: float  # time.monotonic() on the receiver


class WebhookReceiver:
    """An HTTP server that verifies Standard Webhooks signatures like a real receiver.

    Answers follow ``replies`` in order, then 200. A delivery whose signature does not
    verify is answered 401, as receivers built on standardwebhooks do.
    """

    def __init__(self, secret: str, replies: list[Reply] | None = None):
        self.deliveries: list[Delivery] = []
        self._verifier = Webhook(secret)
        self._replies = list(replies or [])
        self._lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/video"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        arrived_at = time.monotonic()
        body = request.rfile.read(int(request.headers["Content-Length"]))
        headers = dict(request.headers.items())
        try:
            payload, error = self._verifier.verify(body, headers), None
        except WebhookVerificationError as verification_error:
            payload, error = None, str(verification_error)
        with self._lock:
            self.deliveries.append(Delivery(headers, body, payload, error, arrived_at))
            reply = self._replies.pop(0) if self._replies else Reply()
        if error is not None:
            reply = Reply(401)
        if reply.hold:
            self.release.wait(timeout=30)
        try:
            request.send_response(reply.status)
            for name, value in reply.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", "0")
            request.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up on a held answer

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def make_receiver() -> Iterator:
    receivers: list[WebhookReceiver] = []

    def make(replies: list[Reply] | None = None, secret: str = SECRET) -> WebhookReceiver:
        receivers.append(WebhookReceiver(secret, replies))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


def fast_settings(**overrides: Any) -> WebhookSettings:
    values = {"secret": SECRET, "max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0}
    return WebhookSettings(**{**values, **overrides})


def deliver(
    settings: WebhookSettings, url: str, event_type: str = VIDEO_COMPLETED, data: dict | None = None
) -> tuple[bool, list[tuple[str, str]]]:
    """Send one event; returns send()'s result and every (event_type, outcome) on_attempt saw."""
    outcomes: list[tuple[str, str]] = []

    async def run() -> bool:
        async with WebhookSender(settings, on_attempt=lambda kind, outcome: outcomes.append((kind, outcome))) as sender:
            # A guard so a broken backoff fails the test instead of hanging it.
            return await asyncio.wait_for(sender.send(url, event_type, JOB_DATA if data is None else data), 60)

    return asyncio.run(run()), outcomes


# --- secrets and settings ---------------------------------------------------------------


def test_generated_secret_is_32_random_bytes_that_standardwebhooks_accepts():
    first, second = generate_webhook_secret(), generate_webhook_secret()
    assert first.startswith("whsec_") and second.startswith("whsec_")
    assert len(base64.b64decode(first.removeprefix("whsec_"), validate=True)) == 32
    assert first != second
    signer, verifier = Webhook(first), Webhook(first)
    now = datetime.now(timezone.utc)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp()))}
    headers["webhook-signature"] = signer.sign("msg_1", now, '{"a":1}')
    assert verifier.verify('{"a":1}', headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(second).verify('{"a":1}', headers)


@pytest.mark.parametrize(
    "overrides,field_name",
    [
        ({"secret": ""}, "secret"),
        ({"secret": "whsec_"}, "secret"),
        ({"secret": "whsec_not base64!"}, "secret"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"initial_backoff_s": -1}, "initial_backoff_s"),
        ({"max_backoff_s": float("inf")}, "max_backoff_s"),
        ({"initial_backoff_s": 5.0, "max_backoff_s": 1.0}, "initial_backoff_s"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_settings_refuse_bad_values_naming_the_field(overrides, field_name):
    with pytest.raises(ValueError, match=f"^{field_name}:"):
        WebhookSettings(**{"secret": SECRET, **overrides})


def test_settings_repr_hides_the_secret():
    settings = WebhookSettings(secret=SECRET)
    assert SECRET.removeprefix("whsec_") not in repr(settings)
    assert "max_attempts=6" in repr(settings)


# --- webhook_url validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080/hooks", "https://example.com", "https://hooks.example.com/a/b?x=1", "http://[::1]:9/x"]
)
def test_validate_webhook_url_accepts_http_and_https_with_a_host(url):
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "example.com/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http:///no-host",
        "http://example.com:99999/",
        "http://exa mple.com/",
        " http://example.com/",
        "http://999.1.1.1/",
        "http://xn--zz.com/",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_validate_webhook_url_refuses_naming_the_field(url):
    with pytest.raises(ValueError, match="^webhook_url:"):
        validate_webhook_url(url)


# --- backoff arithmetic -----------------------------------------------------------------


def test_backoff_doubles_with_equal_jitter_and_stops_at_the_cap():
    settings = WebhookSettings(secret=SECRET, initial_backoff_s=0.5, max_backoff_s=30.0)
    assert [retry_delay_s(settings, attempt, None, jitter=0.0) for attempt in range(1, 9)] == [
        0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0
    ]
    assert [retry_delay_s(settings, attempt, None, jitter=1.0) for attempt in range(1, 9)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0
    ]
    assert retry_delay_s(settings, 3, None, jitter=0.5) == 1.5


def test_retry_after_replaces_the_backoff_but_never_exceeds_the_cap():
    settings = WebhookSettings(secret=SECRET, initial_backoff_s=0.5, max_backoff_s=30.0)
    assert retry_delay_s(settings, 1, retry_after=7.0, jitter=0.9) == 7.0
    assert retry_delay_s(settings, 1, retry_after=0.0, jitter=0.9) == 0.0
    assert retry_delay_s(settings, 1, retry_after=3600.0, jitter=0.0) == 30.0


def test_retry_after_header_reads_seconds_and_http_dates():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after_s("120") == 120.0
    assert retry_after_s(" 3 ") == 3.0
    assert retry_after_s(format_datetime(now + timedelta(seconds=90), usegmt=True), now=now) == 90.0
    assert retry_after_s(format_datetime(now - timedelta(seconds=90), usegmt=True), now=now) == 0.0
    for unreadable in (None, "", "soon", "-5", "1.5", "\u00b2"):
        assert retry_after_s(unreadable) is None


# --- deliveries to a real receiver ------------------------------------------------------


def test_delivery_is_signed_and_carries_type_timestamp_and_data(make_receiver):
    receiver = make_receiver()
    before = datetime.now(timezone.utc)
    delivered, outcomes = deliver(fast_settings(), receiver.url, VIDEO_FAILED, {"job_id": "j1", "error": "OOM"})
    after = datetime.now(timezone.utc)

    assert delivered is True
    assert outcomes == [(VIDEO_FAILED, "delivered")]
    [delivery] = receiver.deliveries
    assert delivery.verification_error is None
    assert delivery.payload["type"] == VIDEO_FAILED
    assert delivery.payload["data"] == {"job_id": "j1", "error": "OOM"}
    assert set(delivery.payload) == {"type", "timestamp", "data"}
    event_time = datetime.fromisoformat(delivery.payload["timestamp"])
    assert event_time.utcoffset() == timedelta(0)
    assert before <= event_time <= after
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"].startswith("msg_")
    assert int(before.timestamp()) <= int(headers["webhook-timestamp"]) <= after.timestamp()
    assert headers["webhook-signature"].startswith("v1,")
    assert json.loads(delivery.body) == delivery.payload


def test_signature_binds_the_body_and_the_id(make_receiver):
    receiver = make_receiver()
    assert deliver(fast_settings(), receiver.url)[0] is True
    [delivery] = receiver.deliveries
    verifier = Webhook(SECRET)
    assert verifier.verify(delivery.body, delivery.headers) == delivery.payload

    tampered_body = delivery.body.replace(b"job-42", b"job-43")
    with pytest.raises(WebhookVerificationError):
        verifier.verify(tampered_body, delivery.headers)
    other_id = {**delivery.headers, "Webhook-Id": "msg_someone_else"}
    with pytest.raises(WebhookVerificationError):
        verifier.verify(delivery.body, other_id)


def test_receiver_with_another_secret_rejects_the_delivery(make_receiver):
    receiver = make_receiver(secret=generate_webhook_secret())
    delivered, outcomes = deliver(fast_settings(), receiver.url)

    [delivery] = receiver.deliveries
    assert delivery.payload is None
    assert delivery.verification_error == "No matching signature found"
    # The receiver's 401 is a client error: not retried.
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "failed")]


def test_two_5xx_then_success_is_three_attempts_of_one_event(make_receiver):
    receiver = make_receiver([Reply(500), Reply(503)])
    delivered, outcomes = deliver(fast_settings(max_attempts=6), receiver.url)

    assert delivered is True
    assert [outcome for _, outcome in outcomes] == ["retry", "retry", "delivered"]
    assert len(receiver.deliveries) == 3
    assert all(delivery.verification_error is None for delivery in receiver.deliveries)
    assert len({delivery.headers["webhook-id"] for delivery in receiver.deliveries}) == 1
    assert len({delivery.body for delivery in receiver.deliveries}) == 1


def test_each_event_gets_its_own_webhook_id(make_receiver):
    receiver = make_receiver()
    assert deliver(fast_settings(), receiver.url)[0] and deliver(fast_settings(), receiver.url)[0]
    first, second = receiver.deliveries
    assert first.headers["webhook-id"] != second.headers["webhook-id"]


def test_always_failing_receiver_gets_exactly_max_attempts_with_growing_backoff(make_receiver):
    receiver = make_receiver([Reply(500)] * 10)
    settings = fast_settings(max_attempts=4, initial_backoff_s=0.04, max_backoff_s=1.0)
    delivered, outcomes = deliver(settings, receiver.url)

    assert delivered is False
    assert [outcome for _, outcome in outcomes] == ["retry", "retry", "retry", "failed"]
    assert len(receiver.deliveries) == 4
    gaps = [b.arrived_at - a.arrived_at for a, b in zip(receiver.deliveries, receiver.deliveries[1:])]
    # Equal jitter keeps at least half of each backoff: 0.02, 0.04, 0.08 s.
    assert [gap >= 0.04 * 2**index / 2 for index, gap in enumerate(gaps)] == [True, True, True]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried(make_receiver, status):
    receiver = make_receiver([Reply(status)])
    delivered, outcomes = deliver(fast_settings(), receiver.url)
    assert delivered is True
    assert [outcome for _, outcome in outcomes] == ["retry", "delivered"]
    assert len(receiver.deliveries) == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422, 302])
def test_other_client_errors_and_redirects_are_not_retried(make_receiver, status):
    redirect = {"Location": "/elsewhere"} if status == 302 else {}
    receiver = make_receiver([Reply(status, redirect)] + [Reply(200)])
    delivered, outcomes = deliver(fast_settings(), receiver.url)
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "failed")]
    assert len(receiver.deliveries) == 1


def test_429_retry_after_is_waited_for(make_receiver):
    receiver = make_receiver([Reply(429, {"Retry-After": "1"})])
    # The backoff alone would wait at most 0.01 s; the receiver asked for a full second.
    delivered, outcomes = deliver(fast_settings(initial_backoff_s=0.01, max_backoff_s=5.0), receiver.url)

    assert delivered is True
    assert [outcome for _, outcome in outcomes] == ["retry", "delivered"]
    first, second = receiver.deliveries
    assert second.arrived_at - first.arrived_at >= 0.95


def test_retry_after_beyond_the_cap_is_cut_to_max_backoff(make_receiver):
    receiver = make_receiver([Reply(503, {"Retry-After": "3600"}), Reply(429, {"Retry-After": "3600"})])
    # Were the hour honoured, the 60 s guard in deliver() would fail this test.
    delivered, outcomes = deliver(fast_settings(max_backoff_s=0.05), receiver.url)
    assert delivered is True
    assert [outcome for _, outcome in outcomes] == ["retry", "retry", "delivered"]
    assert len(receiver.deliveries) == 3


def test_connection_refused_is_retried_then_given_up():
    # Bound but not listening: connecting gets ECONNREFUSED, and no one else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed_port.getsockname()[1]}/hooks"
        delivered, outcomes = deliver(fast_settings(max_attempts=3), url)
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "retry"), (VIDEO_COMPLETED, "retry"), (VIDEO_COMPLETED, "failed")]


def test_read_timeout_is_retried(make_receiver):
    receiver = make_receiver([Reply(200, hold=True)])
    delivered, outcomes = deliver(fast_settings(max_attempts=2, timeout_s=1.0), receiver.url)
    assert delivered is True
    assert [outcome for _, outcome in outcomes] == ["retry", "delivered"]
    assert len(receiver.deliveries) == 2


def test_on_attempt_sees_every_outcome_in_order(make_receiver):
    receiver = make_receiver([Reply(500), Reply(429), Reply(502)])
    delivered, outcomes = deliver(fast_settings(max_attempts=6), receiver.url, VIDEO_FAILED)
    assert delivered is True
    assert outcomes == [
        (VIDEO_FAILED, "retry"),
        (VIDEO_FAILED, "retry"),
        (VIDEO_FAILED, "retry"),
        (VIDEO_FAILED, "delivered"),
    ]


def test_a_raising_on_attempt_hook_does_not_break_delivery(make_receiver):
    receiver = make_receiver([Reply(500)])

    def broken_metrics(event_type: str, outcome: str) -> None:
        raise RuntimeError("metrics backend down")

    async def run() -> bool:
        async with WebhookSender(fast_settings(), on_attempt=broken_metrics) as sender:
            return await sender.send(receiver.url, VIDEO_COMPLETED, JOB_DATA)

    assert asyncio.run(run()) is True
    assert len(receiver.deliveries) == 2


def test_an_invalid_url_is_reported_as_failed_not_raised():
    delivered, outcomes = deliver(fast_settings(), "ftp://127.0.0.1/hooks")
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "failed")]


# --- the secret from the environment variable the config names ---------------------------

SECRET_ENV = "VIDEOSERVE_TEST_WEBHOOK_SECRET"


def test_the_secret_from_the_env_var_signs_deliveries_the_receiver_verifies(make_receiver, monkeypatch, tmp_path):
    from serve.app_config import AppConfig

    env_secret = generate_webhook_secret()
    monkeypatch.setenv(SECRET_ENV, env_secret + "\n")  # as a Secret written from a file often is
    config = AppConfig(webhooks={"secret_env": SECRET_ENV})
    assert env_secret not in config.model_dump_json()
    secret = configured_webhook_secret(secret=config.webhooks.secret, secret_env=config.webhooks.secret_env,
                                       generated_file=tmp_path / "webhook_secret")
    receiver = make_receiver(secret=env_secret)
    delivered, outcomes = deliver(fast_settings(secret=secret), receiver.url)
    [delivery] = receiver.deliveries
    assert delivered is True and outcomes == [(VIDEO_COMPLETED, "delivered")]
    assert delivery.verification_error is None and delivery.payload["data"] == JOB_DATA
    assert not (tmp_path / "webhook_secret").exists()  # nothing generated when the env var supplies it


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_a_named_but_missing_secret_variable_is_an_error_naming_it(monkeypatch, tmp_path, value):
    from serve.secret_env import MissingSecretError

    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(MissingSecretError, match=f"webhooks.secret_env names the environment variable {SECRET_ENV}"):
        configured_webhook_secret(secret=None, secret_env=SECRET_ENV, generated_file=tmp_path / "webhook_secret")
    assert not (tmp_path / "webhook_secret").exists()  # no silent fallback to a generated secret


def test_secret_and_secret_env_together_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    with pytest.raises(ValueError, match="secret_env or secret, not both"):
        configured_webhook_secret(secret=SECRET, secret_env=SECRET_ENV, generated_file=tmp_path / "webhook_secret")


def test_without_a_configured_secret_one_is_generated_once_and_kept(tmp_path):
    path = tmp_path / "state" / "webhook_secret"
    first = configured_webhook_secret(secret=None, secret_env=None, generated_file=path)
    assert first.startswith("whsec_")
    WebhookSettings(secret=first)  # raises unless it decodes to a usable key
    assert configured_webhook_secret(secret=None, secret_env=None, generated_file=path) == first
    assert path.stat().st_mode & 0o777 == 0o600
    assert configured_webhook_secret(secret=SECRET, secret_env=None, generated_file=path) == SECRET
