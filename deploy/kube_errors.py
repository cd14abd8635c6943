"""The kubernetes client's exceptions turned into DeployError: one line, one exit code per cause.

The API server's own answer (a ``Status`` object) is kept in the message, prefixed with what
we were doing (verb, resource, namespace), because "forbidden" alone does not tell an
operator which Role to fix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import urllib3
from kubernetes.client.exceptions import ApiException

from deploy.exit_codes import DeployError, ExitCode


@dataclass(frozen=True)
class ApiCall:
    """What a request does, in RBAC's words (verb, resource, namespace)."""

    verb: str  # get, list, patch, delete
    resource: str  # plural[.group]: "secrets", "rayservices.ray.io"
    namespace: str | None
    name: str | None = None

    def describe(self) -> str:
        target = self.resource if self.name is None else f"{self.resource} {self.name!r}"
        where = f" in namespace {self.namespace!r}" if self.namespace else ""
        return f"{self.verb} {target}{where}"


def server_message(error: ApiException) -> str:
    """The ``message`` of the Status the API server sent, else its HTTP reason."""
    return status_body(error).get("message") or str(error.reason or "").strip() or f"HTTP {error.status}"


def status_body(error: ApiException) -> dict:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def api_error(error: ApiException, call: ApiCall) -> DeployError:
    """Translate an API server refusal; callers handle the 404s that mean something to them first."""
    message = server_message(error)
    if error.status == 401:
        return DeployError(
            f"unauthorized: the API server rejected our credentials while trying to {call.describe()} "
            f"({message}); refresh the kubeconfig's token or pick another --context",
            ExitCode.FORBIDDEN,
        )
    if error.status == 403:
        namespace = f"namespace {call.namespace!r}" if call.namespace else "the cluster"
        return DeployError(
            f"forbidden by RBAC: cannot {call.verb} {call.resource} in {namespace} ({message}); "
            f"ask a cluster admin for a Role granting {call.verb!r} on {call.resource} there",
            ExitCode.FORBIDDEN,
        )
    if error.status == 404 and (status_body(error).get("details") or {}).get("kind") == "namespaces":
        return DeployError(
            f"namespace {call.namespace!r} does not exist (create it: kubectl create namespace {call.namespace})",
            ExitCode.NOT_FOUND,
        )
    if error.status == 409 and call.verb == "patch":
        return DeployError(
            f"conflict while server-side applying {call.resource} {call.name!r}: {message}; another field "
            "manager owns these fields: rerun with --force-conflicts to take them over",
            ExitCode.API_ERROR,
        )
    answer = " ".join(part for part in (str(error.status), error.reason) if part)
    return DeployError(
        f"the API server answered {answer} when asked to {call.describe()}: {message}", ExitCode.API_ERROR
    )


def unreachable(server: str, error: Exception) -> DeployError:
    reason = getattr(error, "reason", None) or error
    # urllib3 puts its connection object in front of the OS error; the server URL already says it.
    text = re.sub(r"(<[^>]*>|HTTPS?Connection\([^)]*\)):\s*", "", str(reason)).strip() or type(reason).__name__
    return DeployError(
        f"cannot reach the Kubernetes API server at {server}: {text} "
        "(is the cluster up, and are --kubeconfig/--context the right ones?)",
        ExitCode.NO_CLUSTER,
    )


@contextmanager
def translated_errors(call: ApiCall, server: str) -> Iterator[None]:
    """Turn the client's exceptions into DeployError for ``call``."""
    try:
        yield
    except ApiException as error:
        if error.status == 0:  # the client's own refusal, before any request went out
            raise DeployError(f"could not {call.describe()}: {error.reason}", ExitCode.API_ERROR) from None
        raise api_error(error, call) from None
    except urllib3.exceptions.HTTPError as error:
        raise unreachable(server, error) from None
