"""Signed job-completion webhooks (Standard Webhooks), delivered with retries.

When a video job ends the server POSTs ``video.completed`` or ``video.failed`` to the
job's ``webhook_url``. Every delivery carries the three Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) so a receiver can check it
with any Standard Webhooks library, e.g. ``standardwebhooks.Webhook(secret).verify``.
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
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from serve.secret_env import secret_from_env

logger = logging.getLogger(__name__)

VIDEO_COMPLETED = "video.completed"
VIDEO_FAILED = "video.failed"

AttemptOutcome = Literal["delivered", "retry", "failed"]

_SECRET_PREFIX = "whsec_"
_SECRET_BYTES = 32
_MAX_URL_LENGTH = 2048
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


def _is_finite_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_webhook_url(url: str) -> str:
    """Return ``url`` unchanged if it is an absolute http(s) URL with a host; raise otherwise."""
    if not isinstance(url, str) or not url:
        raise ValueError(f"webhook_url: must be a non-empty http or https URL (got {url!r})")
    if len(url) > _MAX_URL_LENGTH:
        raise ValueError(f"webhook_url: must be at most {_MAX_URL_LENGTH} characters (got {len(url)})")
    if url != url.strip() or any(ord(character) < 0x21 or ord(character) == 0x7F for character in url):
        raise ValueError(f"webhook_url: must not contain whitespace or control characters (got {url!r})")
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number in 0..65535
        # httpx's parser is stricter in places (IDNA host names, IPv4 octets); a URL it
        # refuses must be refused here, when the job is submitted, not at delivery time.
        httpx.URL(url).host  # .host decodes IDNA labels, which Request does too
    except (ValueError, httpx.InvalidURL) as error:
        raise ValueError(f"webhook_url: not a valid URL ({error}; got {url!r})") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"webhook_url: scheme must be http or https (got {url!r})")
    if not parts.hostname:
        raise ValueError(f"webhook_url: must include a host (got {url!r})")
    return url


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


def _is_retryable(status_code: int) -> bool:
    return status_code in (408, 429) or 500 <= status_code <= 599


def _utc_iso8601(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


class WebhookSender:
    """Delivers signed webhook events over one shared ``httpx.AsyncClient``."""

    def __init__(self, settings: WebhookSettings, on_attempt: Callable[[str, str], None] | None = None):
        self._settings = settings
        self._webhook = Webhook(settings.secret)
        self._on_attempt = on_attempt
        self._random = random.Random()
        # Redirects are not followed: the signature is bound to the delivery, and a
        # receiver that moved should have its webhook_url updated, not be chased.
        self._client = httpx.AsyncClient(
            timeout=settings.timeout_s,
            follow_redirects=False,
            headers={"user-agent": _USER_AGENT},
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, url: str, event_type: str, data: dict[str, Any]) -> bool:
        """POST one event to ``url``; True once a 2xx answer arrives, False when it gives up.

        Delivery problems (bad URL, network errors, timeouts, error answers) are reported
        through the return value, logs and ``on_attempt``, never raised. ``data`` that
        cannot be encoded as JSON is a caller bug and raises TypeError/ValueError.
        """
        body = json.dumps(
            {"type": event_type, "timestamp": _utc_iso8601(datetime.now(timezone.utc)), "data": data},
            separators=(",", ":"),
        )
        # One id for every retry of this event: receivers deduplicate on it.
        message_id = f"msg_{uuid.uuid4().hex}"
        try:
            validate_webhook_url(url)
        except ValueError as error:
            logger.warning("webhook %s %s not sent: %s", event_type, message_id, error)
            self._report(event_type, "failed")
            return False

        max_attempts = self._settings.max_attempts
        for attempt in range(1, max_attempts + 1):
            retry_after: float | None = None
            try:
                status_code, retry_after_header = await self._post(url, message_id, body)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
                retryable = True
            else:
                if 200 <= status_code <= 299:
                    self._report(event_type, "delivered")
                    return True
                problem = f"HTTP {status_code}"
                retryable = _is_retryable(status_code)
                retry_after = retry_after_s(retry_after_header)

            if not retryable or attempt == max_attempts:
                logger.warning(
                    "webhook %s %s to %s failed after %d attempt(s): %s", event_type, message_id, url, attempt, problem
                )
                self._report(event_type, "failed")
                return False
            delay = retry_delay_s(self._settings, attempt, retry_after, self._random.random())
            logger.info(
                "webhook %s %s to %s attempt %d/%d: %s; retrying in %.2f s",
                event_type, message_id, url, attempt, max_attempts, problem, delay,
            )
            self._report(event_type, "retry")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns")

    async def _post(self, url: str, message_id: str, body: str) -> tuple[int, str | None]:
        # Signed per attempt: the timestamp is when this attempt left, so a receiver's
        # replay window (five minutes in standardwebhooks) still accepts late retries.
        sent_at = datetime.now(timezone.utc)
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, sent_at, body),
        }
        # Streamed and never read: only the status matters, and the receiver's URL comes
        # from a user, so its body could be arbitrarily large.
        async with self._client.stream("POST", url, content=body.encode("utf-8"), headers=headers) as response:
            return response.status_code, response.headers.get("retry-after")

    def _report(self, event_type: str, outcome: AttemptOutcome) -> None:
        if self._on_attempt is None:
            return
        try:
            self._on_attempt(event_type, outcome)
        except Exception:
            # A broken metrics hook must not turn a delivered webhook into a failed one.
            logger.exception("webhook on_attempt callback raised for %s %s", event_type, outcome)
