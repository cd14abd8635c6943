"""A RayService's ``.status`` (KubeRay v1.7, ray.io/v1) read into plain records, and the one
rule for "is it ready": the Ready condition (``serviceStatus: Running`` on operators older
than v1.3, which have no conditions), every application RUNNING, and no upgrade pending.

Shape (deploy/crds/kuberay-v1.7.0/ray.io_rayservices.yaml, ``status``):
``conditions[{type, status, reason, message}]`` (types Ready and UpgradeInProgress),
``serviceStatus``, ``numServeEndpoints``, ``observedGeneration``, and
``activeServiceStatus`` / ``pendingServiceStatus`` each with ``rayClusterName`` and
``applicationStatuses: {app: {status, message, serveDeploymentStatuses: {deployment:
{status, message}}}}``. Application statuses are Ray Serve's: NOT_STARTED, DEPLOYING,
RUNNING, DEPLOY_FAILED, DELETING, UNHEALTHY.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

RUNNING = "RUNNING"
DEPLOY_FAILED = "DEPLOY_FAILED"
UNHEALTHY = "UNHEALTHY"
HEALTHY = "HEALTHY"
# KubeRay gives up on a RayService that did not come up within its initializing timeout.
INITIALIZING_TIMEOUT = "InitializingTimeout"


@dataclass(frozen=True)
class DeploymentState:
    name: str
    status: str
    message: str


@dataclass(frozen=True)
class ApplicationState:
    cluster: str  # "active" or "pending" (the new RayCluster of a zero-downtime upgrade)
    name: str
    status: str
    message: str
    deployments: tuple[DeploymentState, ...]


@dataclass(frozen=True)
class Condition:
    type: str
    status: str
    reason: str
    message: str


@dataclass(frozen=True)
class RayServiceState:
    name: str
    namespace: str
    generation: int | None
    observed_generation: int | None
    service_status: str
    conditions: tuple[Condition, ...]
    num_serve_endpoints: int | None
    active_cluster: str
    pending_cluster: str
    applications: tuple[ApplicationState, ...]

    @classmethod
    def from_object(cls, rayservice: Mapping[str, Any]) -> RayServiceState:
        metadata = rayservice.get("metadata") or {}
        status = rayservice.get("status") or {}
        active = status.get("activeServiceStatus") or {}
        pending = status.get("pendingServiceStatus") or {}
        return cls(
            name=metadata.get("name", ""),
            namespace=metadata.get("namespace", ""),
            generation=metadata.get("generation"),
            observed_generation=status.get("observedGeneration"),
            service_status=status.get("serviceStatus") or "",
            conditions=tuple(
                Condition(
                    type=entry.get("type", ""),
                    status=entry.get("status", ""),
                    reason=entry.get("reason", ""),
                    message=entry.get("message", ""),
                )
                for entry in status.get("conditions") or []
            ),
            num_serve_endpoints=status.get("numServeEndpoints"),
            active_cluster=active.get("rayClusterName") or "",
            pending_cluster=pending.get("rayClusterName") or "",
            applications=_applications("active", active) + _applications("pending", pending),
        )

    def condition(self, condition_type: str) -> Condition | None:
        return next((entry for entry in self.conditions if entry.type == condition_type), None)

    @property
    def has_status(self) -> bool:
        return bool(self.conditions or self.service_status or self.applications or self.observed_generation)


def _applications(cluster: str, service_status: Mapping[str, Any]) -> tuple[ApplicationState, ...]:
    return tuple(
        ApplicationState(
            cluster=cluster,
            name=name,
            status=app.get("status", ""),
            message=app.get("message", ""),
            deployments=tuple(
                DeploymentState(name=deployment, status=entry.get("status", ""), message=entry.get("message", ""))
                for deployment, entry in sorted((app.get("serveDeploymentStatuses") or {}).items())
            ),
        )
        for name, app in sorted((service_status.get("applicationStatuses") or {}).items())
    )


class Phase(Enum):
    READY = "ready"
    PROGRESSING = "progressing"
    UNHEALTHY = "unhealthy"  # may recover: wait keeps polling, and fails if it lasts to the timeout
    FAILED = "failed"  # will not recover without a change: wait stops at once


@dataclass(frozen=True)
class Readiness:
    phase: Phase
    summary: str


def assess(state: RayServiceState) -> Readiness:
    if not state.has_status:
        return Readiness(Phase.PROGRESSING, "no status yet (is the KubeRay operator running?)")
    if state.generation and state.observed_generation and state.observed_generation < state.generation:
        # The status still describes the previous spec: neither its failures nor its readiness count.
        return Readiness(
            Phase.PROGRESSING,
            f"the operator has not caught up with the latest spec yet "
            f"(generation {state.generation}, status of {state.observed_generation})",
        )
    failed = [app for app in state.applications if app.status == DEPLOY_FAILED]
    if failed:
        return Readiness(Phase.FAILED, "; ".join(_describe_problem(app) for app in failed))
    ready = state.condition("Ready")
    if ready is not None and ready.status != "True" and ready.reason == INITIALIZING_TIMEOUT:
        return Readiness(Phase.FAILED, f"RayService gave up initializing: {ready.message or ready.reason}")
    unhealthy = [app for app in state.applications if app.status == UNHEALTHY]
    if unhealthy:
        return Readiness(Phase.UNHEALTHY, "; ".join(_describe_problem(app) for app in unhealthy))

    is_ready = ready.status == "True" if ready is not None else state.service_status == "Running"
    upgrade = state.condition("UpgradeInProgress")
    upgrading = bool(state.pending_cluster) or (upgrade is not None and upgrade.status == "True")
    active = [app for app in state.applications if app.cluster == "active"]
    waiting_on: list[str] = []
    if not is_ready:
        if ready is not None:
            detail = f" ({ready.reason})" if ready.reason else ""
            waiting_on.append(
                f"Ready={ready.status or 'Unknown'}{detail}" + (f": {ready.message}" if ready.message else "")
            )
        else:
            waiting_on.append(f"serviceStatus={state.service_status or 'none'}")
    if not active:
        waiting_on.append("no application reported yet")
    waiting_on += [
        f"application {app.name} {app.status or 'without status'}" for app in active if app.status != RUNNING
    ]
    if upgrading:
        pending = f" to RayCluster {state.pending_cluster}" if state.pending_cluster else ""
        waiting_on.append(f"upgrade in progress{pending}")
    if waiting_on:
        return Readiness(Phase.PROGRESSING, "; ".join(waiting_on))
    endpoints = f", {state.num_serve_endpoints} serve endpoints" if state.num_serve_endpoints is not None else ""
    return Readiness(Phase.READY, f"ready: {len(active)} application(s) RUNNING{endpoints}")


def _describe_problem(app: ApplicationState) -> str:
    where = " on the pending cluster" if app.cluster == "pending" else ""
    text = f"application {app.name}{where} is {app.status}"
    details = [app.message] if app.message else []
    details += [
        f"deployment {deployment.name} {deployment.status}: {deployment.message}"
        for deployment in app.deployments
        if deployment.status not in (HEALTHY, "") and deployment.message
    ]
    return text + (": " + " | ".join(details) if details else "")
