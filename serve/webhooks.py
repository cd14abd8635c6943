"""Signed job-completion webhooks (Standard Webhooks), delivered with retries.

When a video job ends the server POSTs ``video.completed`` or ``video.failed`` to the
job's ``webhook_url``. Every delivery carries the three Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) so a receiver can check it
with any Standard Webhooks library, e.g. ``standardwebhooks.Webhook(secret).verify``.
The body is OpenAI's webhook event: ``{"id": "evt_...", "object": "event", "created_at": ...,
"type": "video.completed", "data": {"id": "video_..."}}``; the receiver fetches the video.

Each attempt re-checks the target (serve/webhook_targets.py) and connects to the address it
checked, so a job cannot make the server call inside the cluster, before or after a DNS change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Literal

import httpx
from standardwebhooks import Webhook

from serve.secret_env import secret_from_env
from serve.webhook_targets import (
    CheckedTarget,
    Resolver,
    TargetPolicy,
    UnresolvableTargetError,
    check_webhook_target,
    resolve_host,
    validate_webhook_url,
)

__all__ = [
    "VIDEO_COMPLETED", "VIDEO_FAILED", "AttemptResult", "WebhookSender", "WebhookSettings",
    "configured_webhook_secret", "generate_webhook_secret", "retry_after_s", "retry_delay_s",
    "validate_webhook_url", "webhook_event_body",
]

logger = logging.getLogger(__name__)

VIDEO_COMPLETED = "video.completed"
VIDEO_FAILED = "video.failed"

AttemptOutcome = Literal["delivered", "retry", "failed"]

_SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32
_USER_AGENT = "videoserve-webhooks/0.1"
_DELTA_SECONDS = re.compile(r"[0-9]+")


def generate_webhook_secret() -> str:
    """A fresh signing secret in the ``whsec_<base64>`` form Standard Webhooks libraries read."""
    return _SECRET_PREFIX + base64.b64encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def configured_webhook_secret(
    *, secret: str | None, secret_env: str | None, generated_file: Path, environ: Mapping[str, str] | None = None
) -> str:
    """The signing secret: from the environment variable ``secret_env`` names, else ``secret``, else one
    generated once into ``generated_file`` (a single-machine convenience; a cluster sets one of the others)."""
    if secret_env is not None and secret is not None:
        raise ValueError("webhooks: set secret_env or secret, not both")
    if secret_env is not None:
        # Stripped: a Secret written from a file often ends in a newline, which base64 never holds.
        return secret_from_env(secret_env, "webhooks.secret_env", environ).strip()
    if secret is not None:
        return secret
    if not generated_file.exists():
        generated_file.parent.mkdir(parents=True, exist_ok=True)
        generated_file.write_text(generate_webhook_secret())
        generated_file.chmod(0o600)
    return generated_file.read_text().strip()


def _secret_bytes(secret: str) -> bytes:
    encoded = secret.removeprefix(_SECRET_PREFIX)
    # standardwebhooks itself decodes leniently (it drops characters outside the base64
    # alphabet), so a mistyped secret would sign with a different key than the receiver
    # holds; decoding strictly here turns that into an error at start-up.
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error as error:
        raise ValueError(f"secret: must be base64, optionally prefixed with {_SECRET_PREFIX!r} ({error})") from None


@dataclass(frozen=True)
class WebhookSettings:
    # repr=False: settings objects end up in logs and tracebacks; the secret must not.
    secret: str = field(repr=False)
    max_attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    timeout_s: float = 10.0
    target_policy: TargetPolicy = TargetPolicy()

    def __post_init__(self) -> None:
        if not isinstance(self.secret, str) or not self.secret.removeprefix(_SECRET_PREFIX):
            raise ValueError("secret: must be a non-empty string (use generate_webhook_secret())")
        if not _secret_bytes(self.secret):
            raise ValueError("secret: decodes to zero bytes")
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool) or self.max_attempts < 1:
            raise ValueError(f"max_attempts: must be an integer >= 1 (got {self.max_attempts!r})")
        for name in ("initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not _is_finite_number(value) or value < 0:
                raise ValueError(f"{name}: must be a finite number >= 0 (got {value!r})")
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(
                f"initial_backoff_s: must not exceed max_backoff_s ({self.initial_backoff_s!r} > {self.max_backoff_s!r})"
            )
        if not _is_finite_number(self.timeout_s) or self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be a finite number > 0 (got {self.timeout_s!r})")
        if not isinstance(self.target_policy, TargetPolicy):
            raise ValueError(f"target_policy: must be a TargetPolicy (got {self.target_policy!r})")


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def retry_after_s(header: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date); None if absent or unreadable."""
    if header is None:
        return None
    header = header.strip()
    if _DELTA_SECONDS.fullmatch(header):
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def retry_delay_s(settings: WebhookSettings, failed_attempts: int, retry_after: float | None, jitter: float) -> float:
    """How long to wait before the next attempt.

    ``failed_attempts`` counts the attempts so far (>= 1); ``jitter`` is a number in [0, 1).
    A receiver's Retry-After wins over the backoff, but never past ``max_backoff_s`` so a
    hostile or confused receiver cannot park a delivery for hours.
    """
    if retry_after is not None:
        return min(retry_after, settings.max_backoff_s)
    backoff = min(settings.initial_backoff_s * 2 ** (failed_attempts - 1), settings.max_backoff_s)
    # "Equal jitter": half the backoff is kept so delays still grow, the other half is
    # random so many jobs failing against one receiver do not retry in lockstep.
    return backoff / 2 + backoff / 2 * jitter


def _event_type_of(body: str) -> str:
    # For on_attempt's label only: a body that is not an event still gets its attempt reported.
    try:
        event = json.loads(body)
    except ValueError:
        return "unknown"
    event_type = event.get("type") if isinstance(event, dict) else None
    return event_type if isinstance(event_type, str) else "unknown"


def _is_retryable(status_code: int) -> bool:
    return status_code in (408, 429) or 500 <= status_code <= 599


def webhook_event_body(event_id: str, event_type: str, video_id: str, created_at: int) -> str:
    """The signed body: OpenAI's webhook event for a video, as compact JSON."""
    return json.dumps(
        {"id": event_id, "object": "event", "created_at": created_at, "type": event_type, "data": {"id": video_id}},
        separators=(",", ":"),
    )


@dataclass(frozen=True)
class AttemptResult:
    """What one delivery attempt came to; ``retry`` leaves the waiting to the caller (see retry_delay_s)."""

    outcome: AttemptOutcome
    status_code: int | None = None  # None: no HTTP answer (refused target, network error, timeout)
    retry_after_s: float | None = None  # what the receiver's Retry-After asked for
    problem: str = ""  # empty when delivered


class WebhookSender:
    """Delivers signed webhook events over one shared ``httpx.AsyncClient``."""

    def __init__(self, settings: WebhookSettings, on_attempt: Callable[[str, str], None] | None = None,
                 *, resolve: Resolver = resolve_host):
        self._settings = settings
        self._webhook = Webhook(settings.secret)
        self._on_attempt = on_attempt
        self._resolve = resolve
        self._random = random.Random()
        # Redirects are not followed: the signature is bound to the delivery, a receiver
        # that moved should have its webhook_url updated, and a redirect target is unchecked.
        # No proxy from the environment: the checked address must be the one connected to.
        # No kept-alive connections: requests go to an IP, so the pool would share one TLS
        # connection (and its SNI) between host names that resolve to the same address.
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_s,
            follow_redirects=False,
            headers={"user-agent": _USER_AGENT},
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, event_type: str, video_id: str, *, message_id: str | None = None) -> bool:
        """POST one event about ``video_id`` to ``url``, retrying; True once a 2xx answer arrives, False when it gives up.

        Delivery problems (refused or bad URL, network errors, timeouts, error answers) are
        reported through the return value, logs and ``on_attempt``, never raised.
        """
        body = webhook_event_body(f"evt_{uuid.uuid4().hex}", event_type, video_id, int(time.time()))
        # One id for every retry of this event: receivers deduplicate on it.
        message_id = message_id or f"msg_{uuid.uuid4().hex}"
        max_attempts = self._settings.max_attempts
        for attempt in range(1, max_attempts + 1):
            result = await self.attempt(url, message_id, body, last_attempt=attempt == max_attempts)
            if result.outcome == "delivered":
                return True
            if result.outcome == "failed":
                logger.warning(
                    "webhook %s %s to %s failed after %d attempt(s): %s",
                    event_type, message_id, url, attempt, result.problem,
                )
                return False
            delay = retry_delay_s(self._settings, attempt, result.retry_after_s, self._random.random())
            logger.info(
                "webhook %s %s to %s attempt %d/%d: %s; retrying in %.2f s",
                event_type, message_id, url, attempt, max_attempts, result.problem, delay,
            )
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt never asks for a retry")

    async def attempt(self, url: str, message_id: str, body: str, *, last_attempt: bool = False) -> AttemptResult:
        """Make one delivery attempt of ``body`` (a webhook_event_body) and say how it went; never sleeps or raises.

        The target is checked again first (DNS may have changed since the job was accepted)
        and the request goes to the address that passed. ``retry`` means try again later;
        with ``last_attempt`` it is reported as ``failed``. ``on_attempt`` hears the outcome.
        """
        result = await self._attempt(url, message_id, body)
        if result.outcome == "retry" and last_attempt:
            result = AttemptResult("failed", result.status_code, result.retry_after_s, result.problem)
        self._report(_event_type_of(body), result.outcome)
        return result

    async def _attempt(self, url: str, message_id: str, body: str) -> AttemptResult:
        try:
            target = await asyncio.to_thread(check_webhook_target, url, self._settings.target_policy, self._resolve)
        except UnresolvableTargetError as error:
            return AttemptResult("retry", problem=str(error))
        except ValueError as error:
            return AttemptResult("failed", problem=str(error))
        try:
            status_code, retry_after_header = await self._post(target, message_id, body)
        except httpx.TransportError as error:
            return AttemptResult("retry", problem=f"{type(error).__name__}: {error}")
        except httpx.InvalidURL as error:
            return AttemptResult("failed", problem=f"InvalidURL: {error}")
        if 200 <= status_code <= 299:
            return AttemptResult("delivered", status_code)
        outcome: AttemptOutcome = "retry" if _is_retryable(status_code) else "failed"
        return AttemptResult(outcome, status_code, retry_after_s(retry_after_header), f"HTTP {status_code}")

    async def _post(self, target: CheckedTarget, message_id: str, body: str) -> tuple[int, str | None]:
        # Signed per attempt: the timestamp is when this attempt left, so a receiver's
        # replay window (five minutes in standardwebhooks) still accepts late retries.
        sent_at = datetime.now(timezone.utc)
        original = httpx.URL(target.url)
        headers = {
            # The URL names the checked IP; the receiver still sees the host it was given.
            "host": original.netloc.decode("ascii"),
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, sent_at, body),
        }
        # TLS names (and verifies) the original host, not the IP the connection goes to.
        extensions = {} if target.host_is_ip or target.scheme != "https" else {"sni_hostname": target.host}
        request = self._client.build_request(
            "POST", original.copy_with(host=target.addresses[0]), content=body.encode("utf-8"), headers=headers,
            extensions=extensions,
        )
        # Streamed and never read: only the status matters, and the receiver's URL comes
        # from a user, so its body could be arbitrarily large.
        response = await self._client.send(request, stream=True)
        try:
            return response.status_code, response.headers.get("retry-after")
        finally:
            await response.aclose()

    def _report(self, event_type: str, outcome: AttemptOutcome) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(event_type, outcome)
        except Exception:
            # A broken metrics hook must not turn a delivered webhook into a failed one.
            logger.exception("webhook on_attempt callback raised for %s %s", event_type, outcome)
