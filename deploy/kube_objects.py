"""Server-side apply and delete of rendered manifests, one API per kind.

The table names every kind the chart can render, in the order they are applied (Helm's
install order: what others refer to first, the RayService and monitors last); deletion runs
it backwards. Built-in kinds go through their typed API (CoreV1Api.patch_namespaced_secret,
...), custom resources through CustomObjectsApi.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deploy.exit_codes import DeployError, ExitCode
from deploy.kube_connection import REQUEST_TIMEOUT, KubeConnection
from deploy.kube_errors import ApiCall, translated_errors

FIELD_MANAGER = "videoserve"
APPLY_PATCH_CONTENT_TYPE = "application/apply-patch+yaml"
RELEASE_LABEL = "app.kubernetes.io/instance"


@dataclass(frozen=True)
class KindRoute:
    api_version: str
    kind: str
    plural: str
    typed_api: type | None = None  # None: a custom resource, through CustomObjectsApi
    method_suffix: str = ""  # patch_namespaced_<suffix> / delete_namespaced_<suffix> on typed_api
    missing_hint: str = ""  # what to install when the cluster does not serve a custom kind

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def rbac_resource(self) -> str:
        """The resource as RBAC rules and kubectl name it: plural.group."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


KUBERAY_HINT = (
    "install the KubeRay operator v1.7+ (helm install kuberay-operator kuberay/kuberay-operator --version 1.7.0)"
)
PROMETHEUS_OPERATOR_HINT = "install the Prometheus Operator CRDs, or turn the monitor off in the chart values"

KIND_ROUTES: tuple[KindRoute, ...] = (
    KindRoute("v1", "ServiceAccount", "serviceaccounts", client.CoreV1Api, "service_account"),
    KindRoute("v1", "Secret", "secrets", client.CoreV1Api, "secret"),
    KindRoute("v1", "ConfigMap", "configmaps", client.CoreV1Api, "config_map"),
    KindRoute("v1", "PersistentVolumeClaim", "persistentvolumeclaims", client.CoreV1Api, "persistent_volume_claim"),
    KindRoute("rbac.authorization.k8s.io/v1", "Role", "roles", client.RbacAuthorizationV1Api, "role"),
    KindRoute(
        "rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", client.RbacAuthorizationV1Api, "role_binding"
    ),
    KindRoute("v1", "Service", "services", client.CoreV1Api, "service"),
    KindRoute("apps/v1", "Deployment", "deployments", client.AppsV1Api, "deployment"),
    KindRoute("apps/v1", "StatefulSet", "statefulsets", client.AppsV1Api, "stateful_set"),
    KindRoute("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", client.PolicyV1Api, "pod_disruption_budget"),
    KindRoute("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", client.NetworkingV1Api, "network_policy"),
    KindRoute("networking.k8s.io/v1", "Ingress", "ingresses", client.NetworkingV1Api, "ingress"),
    KindRoute("ray.io/v1", "RayService", "rayservices", missing_hint=KUBERAY_HINT),
    KindRoute("monitoring.coreos.com/v1", "PodMonitor", "podmonitors", missing_hint=PROMETHEUS_OPERATOR_HINT),
    KindRoute("monitoring.coreos.com/v1", "ServiceMonitor", "servicemonitors", missing_hint=PROMETHEUS_OPERATOR_HINT),
)
RAYSERVICE_ROUTE = next(route for route in KIND_ROUTES if route.kind == "RayService")
_ROUTES_BY_TYPE = {(route.api_version, route.kind): route for route in KIND_ROUTES}


def route_for(manifest: Mapping[str, Any]) -> KindRoute:
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    route = _ROUTES_BY_TYPE.get(key)
    if route is None:
        known = ", ".join(sorted(f"{route.api_version} {route.kind}" for route in KIND_ROUTES))
        raise DeployError(
            f"the chart rendered {key[1]} ({key[0]}), which the deploy CLI does not know how to apply (it knows: {known})",
            ExitCode.BAD_INPUT,
        )
    return route


def in_apply_order(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {route: index for index, route in enumerate(KIND_ROUTES)}
    return sorted(manifests, key=lambda manifest: order[route_for(manifest)])  # stable: template order within a kind


def object_name(manifest: Mapping[str, Any]) -> str:
    return manifest.get("metadata", {}).get("name") or ""


def require_served(connection: KubeConnection, route: KindRoute) -> None:
    """Fail with what to install when the cluster does not serve ``route``'s custom kind."""
    call = ApiCall("get", f"/apis/{route.api_version}", None)
    with translated_errors(call, connection.server):
        try:
            response = client.CustomObjectsApi(connection.api_client).get_api_resources(
                route.group, route.version, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
            served = {resource.get("name") for resource in json.loads(response.data).get("resources", [])}
        except ApiException as error:
            if error.status != 404:
                raise
            served = set()
    if route.plural not in served:
        raise DeployError(
            f"{route.kind} is not installed in this cluster: it does not serve {route.api_version} {route.plural}; "
            f"{route.missing_hint}",
            ExitCode.CRD_MISSING,
        )


def apply_object(connection: KubeConnection, manifest: Mapping[str, Any], namespace: str, force: bool) -> int:
    """Server-side apply ``manifest`` into ``namespace``; returns the HTTP status (201 created, 200 updated)."""
    route = route_for(manifest)
    name = object_name(manifest)
    body = {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}
    options: dict[str, Any] = {
        "field_manager": FIELD_MANAGER,
        "_content_type": APPLY_PATCH_CONTENT_TYPE,
        # The typed models would drop fields they do not know, and custom objects have none.
        "_preload_content": False,
        "_request_timeout": REQUEST_TIMEOUT,
    }
    if force:  # the API refuses force=false on nothing, but kubectl leaves it out unless asked
        options["force"] = True
    call = ApiCall("patch", route.rbac_resource, namespace, name)
    with translated_errors(call, connection.server):
        if route.typed_api is None:
            response = client.CustomObjectsApi(connection.api_client).patch_namespaced_custom_object(
                route.group, route.version, namespace, route.plural, name, body, **options
            )
        else:
            patch = getattr(route.typed_api(connection.api_client), f"patch_namespaced_{route.method_suffix}")
            response = patch(name, namespace, body, **options)
    return response.status


def delete_object(connection: KubeConnection, manifest: Mapping[str, Any], namespace: str) -> bool:
    """Delete ``manifest``'s object; False when it was already gone (or its kind is not served)."""
    route = route_for(manifest)
    name = object_name(manifest)
    options: dict[str, Any] = {
        "propagation_policy": "Background",
        "_preload_content": False,
        "_request_timeout": REQUEST_TIMEOUT,
    }
    call = ApiCall("delete", route.rbac_resource, namespace, name)
    with translated_errors(call, connection.server):
        try:
            if route.typed_api is None:
                client.CustomObjectsApi(connection.api_client).delete_namespaced_custom_object(
                    route.group, route.version, namespace, route.plural, name, **options
                )
            else:
                delete = getattr(route.typed_api(connection.api_client), f"delete_namespaced_{route.method_suffix}")
                delete(name, namespace, **options)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
    return True


def find_rayservice(connection: KubeConnection, release: str, namespace: str) -> dict[str, Any]:
    """The release's RayService object (found by its Helm instance label), status included.

    Check ``require_served(connection, RAYSERVICE_ROUTE)`` once first: without the CRD this
    answers 404, which reads as "no RayService" rather than "no KubeRay".
    """
    route = RAYSERVICE_ROUTE
    selector = f"{RELEASE_LABEL}={release}"
    call = ApiCall("list", route.rbac_resource, namespace)
    with translated_errors(call, connection.server):
        response = client.CustomObjectsApi(connection.api_client).list_namespaced_custom_object(
            route.group,
            route.version,
            namespace,
            route.plural,
            label_selector=selector,
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
    items = json.loads(response.data).get("items") or []
    # Filter here too: the selector is the server's job, but an answer that ignored it must not
    # make us report (or wait for) another release's RayService.
    mine = [item for item in items if (item.get("metadata", {}).get("labels") or {}).get(RELEASE_LABEL) == release]
    if not mine:
        raise DeployError(
            f"RayService of release {release!r} not found in namespace {namespace!r} "
            f"(deploy it with: videoserve deploy apply --release {release} --namespace {namespace})",
            ExitCode.NOT_FOUND,
        )
    if len(mine) > 1:
        names = ", ".join(sorted(object_name(item) for item in mine))
        raise DeployError(
            f"several RayServices carry {selector} in namespace {namespace!r}: {names}", ExitCode.API_ERROR
        )
    return mine[0]
