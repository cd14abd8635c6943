"""Per-tenant request rate on /v1/*, with the ``limits`` library's moving window.

Answers 429 in OpenAI's shape (code ``rate_limit_exceeded``) with a ``Retry-After`` taken
from the window: when the oldest counted request leaves it.
"""

from __future__ import annotations

import asyncio
import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import storage_from_string
from limits.strategies import MovingWindowRateLimiter
from starlette.types import ASGIApp, Receive, Scope, Send

from serve.api.api_keys import is_api_request, request_tenant
from serve.api.errors import error_response
from serve.app_config import AppConfig
from serve.jobs.redis_store import split_prefix
from serve.secret_env import secret_from_env


class TenantRateLimiter:
    """``per_minute`` requests per tenant; counted in ``storage_uri`` (memory:// or redis://)."""

    def __init__(self, per_minute: int, storage_uri: str = "memory://", **storage_options):
        self.limit = RateLimitItemPerMinute(per_minute)
        self.limiter = MovingWindowRateLimiter(storage_from_string(storage_uri, **storage_options))

    def admit(self, owner: str) -> float | None:
        """None when the request may go on, else the seconds until it would (blocking with Redis)."""
        if self.limiter.hit(self.limit, "videoserve", owner):
            return None
        reset_at = self.limiter.get_window_stats(self.limit, "videoserve", owner).reset_time
        return max(1.0, reset_at - time.time())


def tenant_rate_limiter(config: AppConfig) -> TenantRateLimiter | None:
    """The app's limiter: counted in the job store's Redis when there is one (so every ingress
    replica shares one count per key), else in this replica's memory."""
    per_minute = config.api.requests_per_minute_per_key
    if per_minute is None or config.api.api_keys_env is None:  # no keys: one tenant, nothing to share out
        return None
    url = config.storage.resolved_job_store_url()
    if not url.startswith(("redis://", "rediss://")):
        return TenantRateLimiter(per_minute)
    client_url, prefix = split_prefix(url)
    options = {"key_prefix": f"{prefix}:ratelimit"}
    if config.storage.job_store_password_env is not None:
        options["password"] = secret_from_env(config.storage.job_store_password_env, "storage.job_store_password_env")
    return TenantRateLimiter(per_minute, client_url, **options)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, limiter: TenantRateLimiter):
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_api_request(scope):
            await self.app(scope, receive, send)
            return
        wait = await asyncio.to_thread(self.limiter.admit, request_tenant(scope).owner)
        if wait is None:
            await self.app(scope, receive, send)
            return
        retry_after = str(math.ceil(wait))
        response = error_response(
            429, f"Rate limit reached: {self.limiter.limit.amount} requests per minute per API key; "
                 f"retry in {retry_after} s.", None, "rate_limit_exceeded", headers={"Retry-After": retry_after})
        await response(scope, receive, send)
