"""Signed webhooks, delivered to a real HTTP receiver on loopback that verifies each one.

Only loopback is ever connected to; refusals of other targets happen before any connection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from serve.webhook_targets import TargetPolicy
from tests.support.webhook_receiver import Reply, WebhookReceiver
from serve.webhooks import (
    VIDEO_COMPLETED,
    VIDEO_FAILED,
    AttemptResult,
    WebhookSender,
    WebhookSettings,
    configured_webhook_secret,
    generate_webhook_secret,
    retry_after_s,
    retry_delay_s,
    validate_webhook_url,
    webhook_event_body,
)

SECRET = generate_webhook_secret()
VIDEO_ID = "video_42"
# The receivers listen on loopback, which the default policy refuses.
LOOPBACK = TargetPolicy(["127.0.0.0/8", "::1/128"])


@pytest.fixture
def make_receiver() -> Iterator:
    receivers: list[WebhookReceiver] = []

    def make(replies: list[Reply] | None = None, secret: str = SECRET, host: str = "127.0.0.1") -> WebhookReceiver:
        receivers.append(WebhookReceiver(secret, replies, host))
        return receivers[-1]

    yield make
    for receiver in receivers:
        receiver.close()


def fast_settings(**overrides: Any) -> WebhookSettings:
    values = {"secret": SECRET, "max_attempts": 4, "initial_backoff_s": 0.01, "max_backoff_s": 0.05, "timeout_s": 5.0,
              "target_policy": LOOPBACK}
    return WebhookSettings(**{**values, **overrides})


def deliver(
    settings: WebhookSettings, url: str, event_type: str = VIDEO_COMPLETED, video_id: str = VIDEO_ID,
    resolve: Any = None, message_id: str | None = None,
) -> tuple[bool, list[tuple[str, str]]]:
    """Send one event; returns send()'s result and every (event_type, outcome) on_attempt saw."""
    outcomes: list[tuple[str, str]] = []
    options = {} if resolve is None else {"resolve": resolve}

    async def run() -> bool:
        record = lambda kind, outcome: outcomes.append((kind, outcome))  # noqa: E731
        async with WebhookSender(settings, on_attempt=record, **options) as sender:
            # A guard so a broken backoff fails the test instead of hanging it.
            return await asyncio.wait_for(sender.send(url, event_type, video_id, message_id=message_id), 60)

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
        ({"target_policy": True}, "target_policy"),
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


def test_delivery_is_signed_and_is_an_openai_webhook_event(make_receiver):
    receiver = make_receiver()
    before = datetime.now(timezone.utc)
    delivered, outcomes = deliver(fast_settings(), receiver.url, VIDEO_FAILED, "video_j1")
    after = datetime.now(timezone.utc)

    assert delivered is True
    assert outcomes == [(VIDEO_FAILED, "delivered")]
    [delivery] = receiver.deliveries
    assert delivery.verification_error is None
    assert set(delivery.payload) == {"id", "object", "created_at", "type", "data"}
    assert delivery.payload["id"].startswith("evt_")
    assert delivery.payload["object"] == "event"
    assert delivery.payload["type"] == VIDEO_FAILED
    assert delivery.payload["data"] == {"id": "video_j1"}
    assert isinstance(delivery.payload["created_at"], int)
    assert int(before.timestamp()) <= delivery.payload["created_at"] <= after.timestamp()
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

    tampered_body = delivery.body.replace(VIDEO_ID.encode(), b"video_43")
    assert tampered_body != delivery.body
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
            return await sender.send(receiver.url, VIDEO_COMPLETED, VIDEO_ID)

    assert asyncio.run(run()) is True
    assert len(receiver.deliveries) == 2


def test_an_invalid_url_is_reported_as_failed_not_raised():
    delivered, outcomes = deliver(fast_settings(), "ftp://127.0.0.1/hooks")
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "failed")]


# --- targets: checked per attempt, and the checked address is the one connected to ---------


class FakeResolver:
    """Answers ``answers`` in turn (the last one repeats); an exception in the list is raised."""

    def __init__(self, *answers: Any):
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_the_default_policy_refuses_a_loopback_target_before_connecting(make_receiver):
    receiver = make_receiver()
    delivered, outcomes = deliver(fast_settings(target_policy=TargetPolicy()), receiver.url)
    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "failed")]  # refused: not retried
    assert receiver.connections == 0 and receiver.deliveries == []


def test_the_delivery_goes_to_the_checked_address_with_the_original_host_header(make_receiver):
    # The system resolves localhost to 127.0.0.1, where nothing listens on this port; the
    # delivery arrives only if the sender connects to the address the check resolved.
    try:
        receiver = make_receiver(host="127.0.0.2")
    except OSError:
        pytest.skip("cannot bind 127.0.0.2 here")
    resolve = FakeResolver(["127.0.0.2"])
    delivered, outcomes = deliver(fast_settings(), f"http://localhost:{receiver.port}/hooks/video", resolve=resolve)

    assert delivered is True and outcomes == [(VIDEO_COMPLETED, "delivered")]
    [delivery] = receiver.deliveries
    headers = {name.lower(): value for name, value in delivery.headers.items()}
    assert headers["host"] == f"localhost:{receiver.port}"
    assert delivery.verification_error is None
    assert resolve.asked == [("localhost", receiver.port)]


def test_a_name_that_resolves_elsewhere_at_retry_time_is_refused_then(make_receiver):
    # DNS rebinding: the first answer passes, the next one is outside the allowlist.
    receiver = make_receiver([Reply(503)])
    resolve = FakeResolver(["127.0.0.1"], ["127.0.0.2"])
    settings = fast_settings(target_policy=TargetPolicy(["127.0.0.1/32"]))
    delivered, outcomes = deliver(settings, f"http://localhost:{receiver.port}/hooks/video", resolve=resolve)

    assert delivered is False
    assert outcomes == [(VIDEO_COMPLETED, "retry"), (VIDEO_COMPLETED, "failed")]
    assert receiver.connections == 1 and len(receiver.deliveries) == 1
    assert len(resolve.asked) == 2


def test_a_name_that_does_not_resolve_is_retried_without_connecting():
    resolve = FakeResolver(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    delivered, outcomes = deliver(fast_settings(max_attempts=3), "http://localhost:9/hooks", resolve=resolve)
    assert delivered is False
    assert [outcome for _, outcome in outcomes] == ["retry", "retry", "failed"]
    assert len(resolve.asked) == 3


def test_one_given_webhook_id_is_used_across_retries(make_receiver):
    receiver = make_receiver([Reply(500), Reply(503)])
    delivered, _ = deliver(fast_settings(max_attempts=5), receiver.url, message_id="msg_outbox_7")
    assert delivered is True
    assert [delivery.headers["webhook-id"] for delivery in receiver.deliveries] == ["msg_outbox_7"] * 3
    assert all(delivery.verification_error is None for delivery in receiver.deliveries)
    assert len({delivery.payload["id"] for delivery in receiver.deliveries}) == 1  # one event, three attempts


def test_attempt_makes_one_attempt_and_reports_it_without_sleeping(make_receiver):
    receiver = make_receiver([Reply(429, {"Retry-After": "120"}), Reply(503)])
    body = webhook_event_body("evt_1", VIDEO_COMPLETED, VIDEO_ID, 1_700_000_000)
    outcomes: list[tuple[str, str]] = []

    async def run() -> list[AttemptResult]:
        async with WebhookSender(fast_settings(), on_attempt=lambda *seen: outcomes.append(seen)) as sender:
            started = time.monotonic()
            first = await sender.attempt(receiver.url, "msg_1", body)
            assert time.monotonic() - started < 5  # the 120 s Retry-After is the caller's to honour
            last = await sender.attempt(receiver.url, "msg_1", body, last_attempt=True)
            done = await sender.attempt(receiver.url, "msg_1", body)
            async with WebhookSender(fast_settings(target_policy=TargetPolicy())) as strict:
                refused = await strict.attempt(receiver.url, "msg_1", body)
            return [first, last, done, refused]

    first, last, done, refused = asyncio.run(run())
    assert first == AttemptResult("retry", 429, 120.0, "HTTP 429")
    assert last == AttemptResult("failed", 503, None, "HTTP 503")
    assert done == AttemptResult("delivered", 200, None, "")
    assert refused.outcome == "failed" and refused.status_code is None
    assert refused.problem.startswith("webhook_url: 127.0.0.1 is not a public address (loopback)")
    assert outcomes == [(VIDEO_COMPLETED, "retry"), (VIDEO_COMPLETED, "failed"), (VIDEO_COMPLETED, "delivered")]
    assert [delivery.payload for delivery in receiver.deliveries] == [json.loads(body)] * 3
    assert receiver.connections == 3


def test_the_event_body_is_openais_webhook_event_as_compact_json():
    body = webhook_event_body("evt_abc", VIDEO_COMPLETED, "video_123", 1_700_000_000)
    assert body == ('{"id":"evt_abc","object":"event","created_at":1700000000,"type":"video.completed",'
                    '"data":{"id":"video_123"}}')


def _self_signed_certificate(tmp_path: Any, name: str) -> tuple[str, str]:
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_names_the_original_host_in_tls_while_connecting_to_the_checked_address(tmp_path):
    import ssl

    cert_file, key_file = _self_signed_certificate(tmp_path, "hooks.test")
    server_names: list[str | None] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda connection, name, _: server_names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        connection, _ = listener.accept()
        try:
            with context.wrap_socket(connection, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client rightly distrusts a self-signed certificate

    server = threading.Thread(target=serve_one, daemon=True)
    server.start()
    body = webhook_event_body("evt_1", VIDEO_COMPLETED, VIDEO_ID, 1_700_000_000)

    async def run() -> AttemptResult:
        async with WebhookSender(fast_settings(), resolve=FakeResolver(["127.0.0.1"])) as sender:
            return await sender.attempt(f"https://hooks.test:{port}/hook", "msg_1", body)

    try:
        result = asyncio.run(run())
        server.join(timeout=10)
    finally:
        listener.close()
    assert server_names == ["hooks.test"]
    assert result.outcome == "retry" and "CERTIFICATE_VERIFY_FAILED" in result.problem


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
    assert delivery.verification_error is None and delivery.payload["data"] == {"id": VIDEO_ID}
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
