"""Secret values the chart generates (the bundled Redis password) kept across applies.

`helm upgrade` keeps them through the chart's ``lookup`` of the live Secret. The Helm SDK
renders offline, where ``lookup`` finds nothing and the chart draws a new random value each
time, so a plain re-apply would change the password under a running Redis. ``apply`` does
the lookup's job instead, without knowing the chart's internals: a Secret value that differs
between two renders of the same values is generated, and when the cluster already holds that
Secret with that key, the cluster's value is the one applied.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deploy.kube_connection import REQUEST_TIMEOUT, KubeConnection
from deploy.kube_errors import ApiCall, translated_errors

_SECRET_FIELDS = ("stringData", "data")


def generated_keys(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, list[str]]:
    """{field: [keys]} of a Secret whose values differ between two renders."""
    return {
        field: sorted(
            key for key, value in (first.get(field) or {}).items() if (second.get(field) or {}).get(key) != value
        )
        for field in _SECRET_FIELDS
        if first.get(field)
    }


def keep_generated_values(
    connection: KubeConnection,
    manifests: list[dict[str, Any]],
    rerendered: list[dict[str, Any]],
    namespace: str,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """``manifests`` with generated Secret values replaced by the cluster's, and {secret: kept keys}."""
    second_render = {_identity(manifest): manifest for manifest in rerendered}
    result: list[dict[str, Any]] = []
    kept: dict[str, list[str]] = {}
    for manifest in manifests:
        other = second_render.get(_identity(manifest))
        generated = generated_keys(manifest, other) if manifest.get("kind") == "Secret" and other else {}
        if not any(generated.values()):
            result.append(manifest)
            continue
        name = manifest["metadata"]["name"]
        existing = _existing_data(connection, name, namespace)
        manifest = copy.deepcopy(manifest)
        for field, keys in generated.items():
            for key in keys:
                if key in existing:  # the API server keeps base64 in data; stringData is write-only
                    manifest[field][key] = existing[key] if field == "data" else _decode(existing[key])
                    kept.setdefault(name, []).append(key)
        result.append(manifest)
    return result, kept


def _identity(manifest: Mapping[str, Any]) -> tuple[str, str, str]:
    return manifest.get("apiVersion", ""), manifest.get("kind", ""), (manifest.get("metadata") or {}).get("name", "")


def _existing_data(connection: KubeConnection, name: str, namespace: str) -> dict[str, str]:
    with translated_errors(ApiCall("get", "secrets", namespace, name), connection.server):
        try:
            response = client.CoreV1Api(connection.api_client).read_namespaced_secret(
                name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as error:
            if error.status == 404:
                return {}
            raise
    return json.loads(response.data).get("data") or {}


def _decode(value: str) -> str:
    return base64.b64decode(value).decode()
