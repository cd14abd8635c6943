"""Bearer API keys for /v1/*, the way OpenAI's API (and so its SDKs) authenticate.

The keys come from the environment variable ``api.api_keys_env`` names; /healthz and
/metrics stay open for probes and Prometheus.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from serve.api.errors import error_response
from serve.secret_env import MissingSecretError, secret_from_env
from serve.tenant import SHARED_TENANT, Tenant

PROTECTED_PREFIX = "/v1"


class ApiKeys:
    """The accepted keys, checked in constant time."""

    def __init__(self, keys: Iterable[str]):
        # Digests, not the keys: every comparison is between equal-length values, so its
        # time says nothing about a key's length or its first differing byte.
        self._digests = tuple(_digest(key.encode("utf-8")) for key in keys)
        if not self._digests:
            raise ValueError("at least one API key is needed")

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, presented: bytes) -> bool:
        digest = _digest(presented)
        matched = False
        for known in self._digests:  # no early exit: which key matched is not timed either
            matched |= hmac.compare_digest(known, digest)
        return matched


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def api_keys_from_env(env_name: str | None, environ: Mapping[str, str] | None = None,
                      field: str = "api.api_keys_env") -> ApiKeys | None:
    """The keys in ``env_name`` (comma-separated), or None when no variable is named (no auth)."""
    if env_name is None:
        return None
    value = secret_from_env(env_name, field, environ)
    keys = [key.strip() for key in value.split(",") if key.strip()]
    if not keys:
        raise MissingSecretError(f"{field}: {env_name} holds no API key (only commas and spaces)")
    return ApiKeys(keys)


def request_tenant(scope: Scope) -> Tenant:
    """The tenant ApiKeyMiddleware found for this request; the shared one when auth is off."""
    return scope.get("state", {}).get("tenant", SHARED_TENANT)


def is_api_request(scope: Scope) -> bool:
    """An HTTP request to /v1/* (what keys and rate limits guard; probes and /metrics stay open)."""
    return scope["type"] == "http" and _is_protected(_route_path(scope))


def _route_path(scope: Scope) -> str:
    """The path inside this app: Serve mounts an application under its route_prefix (root_path)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def _is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class ApiKeyMiddleware:
    """Answers 401 in OpenAI's error shape to a /v1/* request without an accepted key, and
    records the tenant of an accepted one (``request_tenant``)."""

    def __init__(self, app: ASGIApp, api_keys: ApiKeys, admin_keys: ApiKeys | None = None):
        self.app = app
        self.api_keys = api_keys
        self.admin_keys = admin_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_api_request(scope):
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        if token is not None:
            is_admin = self.admin_keys is not None and self.admin_keys.accepts(token)
            if is_admin or self.api_keys.accepts(token):
                scope.setdefault("state", {})["tenant"] = Tenant.of_key(token, is_admin=is_admin)
                await self.app(scope, receive, send)
                return
        message = (
            "Missing API key: send it as 'Authorization: Bearer <key>'."
            if token is None
            else "Incorrect API key provided."
        )
        response = error_response(401, message, None, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)
