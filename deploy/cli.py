"""``videoserve deploy``: render the Helm chart, server-side apply it, watch and remove it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from deploy.exit_codes import DeployError, ExitCode

EXIT_CODES_HELP = "\n".join(
    [
        "Exit codes:",
        f"{ExitCode.OK.value} ok (wait: ready);",
        f"{ExitCode.DEPLOY_FAILED.value} wait: an application is DEPLOY_FAILED, or stayed UNHEALTHY until the timeout;",
        f"{ExitCode.BAD_INPUT.value} bad values, --set or rendered manifests;",
        f"{ExitCode.NO_CLUSTER.value} no cluster configured or reachable;",
        f"{ExitCode.CRD_MISSING.value} KubeRay (ray.io/v1 RayService) or another rendered kind is not installed;",
        f"{ExitCode.FORBIDDEN.value} forbidden by RBAC, or credentials refused;",
        f"{ExitCode.NOT_FOUND.value} the release's RayService (or its namespace) is not there;",
        f"{ExitCode.TIMEOUT.value} wait: not ready before --timeout;",
        f"{ExitCode.API_ERROR.value} any other API error (e.g. an apply conflict: see --force-conflicts).",
    ]
)

deploy_app = typer.Typer(
    help="Deploy videoserve on Kubernetes as a KubeRay RayService (the Helm chart in helm/videoserve).\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
)

ValuesOption = Annotated[
    list[Path] | None,
    typer.Option("--values", "-f", exists=True, dir_okay=False, help="A values file; repeat to layer several."),
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="key=value (dotted keys, comma-separated pairs), as helm --set.")
]
ReleaseOption = Annotated[str, typer.Option(help="Helm release name (names the objects, labels them).")]
NamespaceOption = Annotated[
    str | None, typer.Option("--namespace", "-n", help="Target namespace (default: the context's, else default).")
]
KubeconfigOption = Annotated[
    Path | None, typer.Option(help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster).")
]
ContextOption = Annotated[str | None, typer.Option(help="kubeconfig context (default: the current one).")]


@contextmanager
def reported_errors() -> Iterator[None]:
    """Every expected failure leaves as one line on stderr and its own exit code."""
    from deploy.helm_chart import ChartRenderError
    from deploy.helm_set_values import SetValueError
    from deploy.rayservice_schema import RayServiceInvalid

    try:
        yield
    except DeployError as error:
        _fail(error.message, error.exit_code)
    except (ChartRenderError, SetValueError) as error:
        _fail(_one_line(str(error)), ExitCode.BAD_INPUT)
    except RayServiceInvalid as error:
        _fail(f"rendered {_one_line(str(error))}", ExitCode.BAD_INPUT)


def _fail(message: str, code: ExitCode) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=int(code))


def _one_line(text: str) -> str:
    """Helm's and the schema check's multi-line reports as one line: "head: item; item"."""
    head, *items = [line.strip() for line in text.splitlines() if line.strip()] or [""]
    joined = head if not items else head.rstrip(":") + ": " + "; ".join(item.removeprefix("- ") for item in items)
    return joined.replace(":; ", ": ")


def rendered_manifests(
    values: list[Path] | None, set_values: list[str] | None, release: str, namespace: str, validate: bool = True
) -> list[dict[str, Any]]:
    """The chart rendered for these values; with ``validate``, its RayService checked against the KubeRay CRD."""
    from deploy.helm_chart import rayservice_of, render_manifests
    from deploy.helm_set_values import parse_set_values

    manifests = render_manifests(
        values_files=list(values or []),
        set_values=parse_set_values(set_values or []),
        release=release,
        namespace=namespace,
    )
    if validate:
        from deploy.rayservice_schema import validate_rayservice  # imports Ray Serve's models: seconds

        validate_rayservice(rayservice_of(manifests))
    return manifests


@deploy_app.command(epilog=EXIT_CODES_HELP)
def render(
    values: ValuesOption = None,
    set_values: SetOption = None,
    release: ReleaseOption = "videoserve",
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="Namespace rendered into the objects.")
    ] = "default",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the YAML here instead of stdout.")
    ] = None,
) -> None:
    """Render every manifest (helm template) and check the RayService against the KubeRay CRD."""
    with reported_errors():
        manifests = rendered_manifests(values, set_values, release, namespace)
        text = yaml.safe_dump_all(manifests, sort_keys=False)
        if output is None:
            typer.echo(text, nl=False)
        else:
            output.write_text(text)
            typer.echo(f"Wrote {len(manifests)} manifests to {output}", err=True)


@deploy_app.command(epilog=EXIT_CODES_HELP)
def apply(
    values: ValuesOption = None,
    set_values: SetOption = None,
    release: ReleaseOption = "videoserve",
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    force_conflicts: Annotated[
        bool, typer.Option(help="Take over fields another field manager owns (server-side apply --force-conflicts).")
    ] = False,
) -> None:
    """Render the chart and server-side apply every object (field manager "videoserve")."""
    from deploy.generated_secrets import keep_generated_values
    from deploy.kube_connection import connect
    from deploy.kube_objects import FIELD_MANAGER, apply_object, in_apply_order, object_name, require_served, route_for

    with reported_errors():
        connection = connect(kubeconfig, context)
        target = namespace or connection.namespace
        manifests = in_apply_order(rendered_manifests(values, set_values, release, target))
        # Check every custom kind first, so a missing CRD applies nothing rather than half a release.
        for route in dict.fromkeys(route_for(manifest) for manifest in manifests):
            if route.typed_api is None:
                require_served(connection, route)
        again = rendered_manifests(values, set_values, release, target, validate=False)
        manifests, kept = keep_generated_values(connection, manifests, again, target)
        for manifest in manifests:
            status = apply_object(connection, manifest, target, force_conflicts)
            name = object_name(manifest)
            generated = kept.get(name) if manifest["kind"] == "Secret" else None
            note = f" (kept the cluster's generated {', '.join(generated)})" if generated else ""
            typer.echo(f"{manifest['kind']}/{name} {'created' if status == 201 else 'applied'}{note}")
        typer.echo(
            f"Applied {len(manifests)} objects to namespace {target} (field manager {FIELD_MANAGER}). "
            f"Follow it with: videoserve deploy wait --release {release} --namespace {target}"
        )


@deploy_app.command(epilog=EXIT_CODES_HELP)
def status(
    release: ReleaseOption = "videoserve",
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Show the RayService's readiness and every application's and deployment's status."""
    from rich.console import Console

    from deploy.kube_connection import connect
    from deploy.kube_objects import RAYSERVICE_ROUTE, find_rayservice, require_served
    from deploy.rayservice_status import RayServiceState, assess
    from deploy.status_table import status_view

    with reported_errors():
        connection = connect(kubeconfig, context)
        require_served(connection, RAYSERVICE_ROUTE)
        state = RayServiceState.from_object(find_rayservice(connection, release, namespace or connection.namespace))
        Console().print(status_view(state, assess(state)))


@deploy_app.command(epilog=EXIT_CODES_HELP)
def wait(
    release: ReleaseOption = "videoserve",
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for readiness.")] = 900.0,
    interval: Annotated[float, typer.Option(min=0.01, help="Seconds between polls.")] = 5.0,
) -> None:
    """Wait until the RayService is Ready and every application RUNNING; fail fast on DEPLOY_FAILED."""
    from rich.console import Console

    from deploy.kube_connection import connect
    from deploy.kube_objects import RAYSERVICE_ROUTE, find_rayservice, require_served
    from deploy.rayservice_status import Phase, RayServiceState
    from deploy.rayservice_wait import wait_until_ready
    from deploy.status_table import status_view

    with reported_errors():
        connection = connect(kubeconfig, context)
        target = namespace or connection.namespace
        require_served(connection, RAYSERVICE_ROUTE)
        outcome = wait_until_ready(
            lambda: RayServiceState.from_object(find_rayservice(connection, release, target)),
            timeout=timeout,
            interval=interval,
            on_change=lambda readiness: typer.echo(f"[{readiness.phase.value}] {readiness.summary}", err=True),
        )
        phase = outcome.readiness.phase
        if phase is Phase.READY:
            typer.echo(f"RayService {outcome.state.namespace}/{outcome.state.name} is {outcome.readiness.summary}")
            return
        Console().print(status_view(outcome.state, outcome.readiness))
        if phase is Phase.FAILED:
            raise DeployError(outcome.readiness.summary, ExitCode.DEPLOY_FAILED)
        if phase is Phase.UNHEALTHY:
            raise DeployError(
                f"still unhealthy after {timeout:g}s: {outcome.readiness.summary}", ExitCode.DEPLOY_FAILED
            )
        raise DeployError(f"not ready after {timeout:g}s: {outcome.readiness.summary}", ExitCode.TIMEOUT)


@deploy_app.command(epilog=EXIT_CODES_HELP)
def delete(
    values: ValuesOption = None,
    set_values: SetOption = None,
    release: ReleaseOption = "videoserve",
    namespace: NamespaceOption = None,
    kubeconfig: KubeconfigOption = None,
    context: ContextOption = None,
) -> None:
    """Delete the release's RayService and the other objects the chart renders (pass the values you applied)."""
    from deploy.kube_connection import connect
    from deploy.kube_objects import RAYSERVICE_ROUTE, delete_object, in_apply_order, object_name, require_served

    with reported_errors():
        connection = connect(kubeconfig, context)
        target = namespace or connection.namespace
        rendered = rendered_manifests(values, set_values, release, target, validate=False)
        manifests = list(reversed(in_apply_order(rendered)))
        require_served(connection, RAYSERVICE_ROUTE)
        deleted = 0
        for manifest in manifests:
            gone_now = delete_object(connection, manifest, target)
            deleted += gone_now
            typer.echo(f"{manifest['kind']}/{object_name(manifest)} {'deleted' if gone_now else 'already gone'}")
        if not deleted:
            raise DeployError(
                f"RayService of release {release!r} not found in namespace {target!r}: nothing to delete",
                ExitCode.NOT_FOUND,
            )
