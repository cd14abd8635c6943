"""The RayService status as a rich table: one row per application, then one per deployment."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from deploy.rayservice_status import DEPLOY_FAILED, HEALTHY, RUNNING, UNHEALTHY, Phase, RayServiceState, Readiness

_PHASE_STYLE = {Phase.READY: "green", Phase.PROGRESSING: "yellow", Phase.UNHEALTHY: "red", Phase.FAILED: "bold red"}
_GOOD = {RUNNING, HEALTHY}
_BAD = {DEPLOY_FAILED, UNHEALTHY}


def status_view(state: RayServiceState, readiness: Readiness) -> RenderableType:
    header = Text()
    header.append(f"RayService {state.namespace}/{state.name}: ", style="bold")
    header.append(readiness.summary, style=_PHASE_STYLE[readiness.phase])
    facts = []
    ready = state.condition("Ready")
    if ready is not None:
        reason = f" ({ready.reason})" if ready.reason else ""
        facts.append(f"Ready={ready.status}{reason}" + (f": {ready.message}" if ready.message else ""))
    if state.service_status:
        facts.append(f"serviceStatus={state.service_status}")
    if state.num_serve_endpoints is not None:
        facts.append(f"serve endpoints={state.num_serve_endpoints}")
    if state.active_cluster:
        facts.append(f"active RayCluster={state.active_cluster}")
    if state.pending_cluster:
        facts.append(f"pending RayCluster={state.pending_cluster}")
    parts: list[RenderableType] = [header]
    if facts:
        parts.append(Text("  ".join(facts)))
    if state.applications:
        parts.append(_applications_table(state))
    return Group(*parts)


def _applications_table(state: RayServiceState) -> Table:
    with_pending = any(app.cluster == "pending" for app in state.applications)
    table = Table(show_lines=False)
    if with_pending:
        table.add_column("cluster")
    table.add_column("application")
    table.add_column("deployment")
    table.add_column("status")
    table.add_column("message", overflow="fold")
    for app in state.applications:
        lead = [app.cluster] if with_pending else []
        table.add_row(*lead, app.name, "", _status(app.status), app.message)
        for deployment in app.deployments:
            lead = [""] if with_pending else []
            table.add_row(*lead, "", deployment.name, _status(deployment.status), deployment.message)
    return table


def _status(status: str) -> Text:
    return Text(status or "-", style="green" if status in _GOOD else "red" if status in _BAD else "yellow")
