"""Starting the application on a Ray cluster from a Ray Serve config file, through Serve's public API.

The file means here what it means to ``serve deploy`` and KubeRay: the applications it
lists are the whole set (others are deleted), its ``http_options`` start the proxy, and
each entry of an application's ``deployments`` overrides, field by field, the options the
code gives that deployment (a field the file sets replaces the code's; ``runtime_env`` of
the application reaches every replica). Serve's own schema validates the file first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from serve.deployment_defaults import APP_NAME, merge_options
from serve.app_config import AppConfig
from serve.denoiser_placement import with_denoiser_placement

IMPORT_PATH = "serve.app_builder:build_app"
# Every replica process of the app. OpenMP threads that spin while they wait for work steal
# the cores of the other stages' threads on a shared CPU: two 2-thread DiT processes on 2
# cores ran a forward in 0.78-0.90 s spinning libgomp's default ~3 ms and 0.30-0.33 s
# sleeping at once (0.22 s alone, either way). Sleeping at once costs a model of many small
# ops dearly, though: each op's workers then wait on a futex wake-up, and the toy model's
# denoising took 1.26 s against 0.60 s. A spin of ~0.3 ms (30,000 rounds, which libgomp
# takes over the passive policy) kept it at 0.64 s (RESULTS.md, 2026-12-06). libgomp reads
# these when it loads, so they must be in the process environment.
MODEL_PROCESS_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}


class DeployFailed(RuntimeError):
    pass


def default_serve_config(app_config: AppConfig | None = None, host: str = "127.0.0.1", port: int = 8000) -> dict[str, Any]:
    """A complete Serve config: the app's args plus every deployment's default options."""
    from serve.app_builder import deployment_options

    app_config = app_config or AppConfig()
    args = app_config.model_dump(mode="json", exclude_defaults=True)
    if app_config.layout == "auto":
        # Decided here, on the machine that renders the config, and written down: the deployment
        # names below follow from it, and a controller elsewhere must build the same ones.
        from serve.layout import resolved_layout

        args["layout"] = resolved_layout(app_config)[0]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": IMPORT_PATH,
                "runtime_env": {"env_vars": dict(MODEL_PROCESS_ENV)},
                "args": args,
                "deployments": [{"name": name, **options} for name, options in deployment_options(app_config).items()],
            }
        ],
    }


def load_serve_config(path: Path) -> dict[str, Any]:
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(Path(path).read_text())
    ServeDeploySchema.model_validate(data)  # fail here, with Serve's own message, not in the controller
    for application in data["applications"]:
        if application.get("import_path") == IMPORT_PATH:
            _place_denoiser(application)
    return data


def with_overrides(config: dict[str, Any], *, args: dict[str, Any] | None = None, host: str | None = None,
                   port: int | None = None) -> dict[str, Any]:
    """Command-line flags win over the file: merge them into the app's args / http options."""
    config = yaml.safe_load(yaml.safe_dump(config))  # deep copy
    if host is not None:
        config.setdefault("http_options", {})["host"] = host
    if port is not None:
        config.setdefault("http_options", {})["port"] = port
    if args:
        application = _application(config)
        application["args"] = merge_options(application.get("args") or {}, args)
        _place_denoiser(application)
    return config


def _place_denoiser(application: dict[str, Any]) -> None:
    """Validate the app's args and give its Denoiser one bundle per rank (derived, or refused if they disagree)."""
    app_config = AppConfig.model_validate(application.get("args") or {})
    for index, deployment in enumerate(application.get("deployments") or []):
        if deployment.get("name") == "Denoiser":
            application["deployments"][index] = with_denoiser_placement(app_config.parallel.degree, deployment)


def deploy(config: dict[str, Any], timeout_s: float = 600) -> None:
    """Start Serve (HTTP proxy per the config), run every application in it, delete the others."""
    import ray
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    if not ray.is_initialized():
        ray.init(namespace="serve")
    serve.start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location,
                grpc_options=schema.grpc_options.model_dump())
    names = [application["name"] for application in config["applications"]]
    for stale in set(serve.status().applications) - set(names):
        serve.delete(stale)
    for application in config["applications"]:
        try:
            serve.run(application_from_config(application), name=application["name"],
                      route_prefix=application.get("route_prefix", "/"))
        except RuntimeError as error:  # Serve's report of a deployment that failed to start
            raise DeployFailed(f"application {application['name']} failed to deploy: {error}") from error
    wait_until_running(names, timeout_s)


def application_from_config(application: dict[str, Any]):
    """The Serve Application one entry of a config file describes (videoserve's own only)."""
    from serve.app_builder import build_application

    if application.get("import_path") != IMPORT_PATH:
        raise ValueError(f"application {application.get('name')!r}: videoserve starts {IMPORT_PATH} "
                         f"(got {application.get('import_path')!r}); deploy other applications with `serve deploy`")
    overrides = {entry["name"]: {key: value for key, value in entry.items() if key != "name"}
                 for entry in application.get("deployments") or []}
    return build_application(AppConfig.model_validate(application.get("args") or {}),
                             deployment_overrides=overrides, runtime_env=application.get("runtime_env"))


def wait_until_running(app_names: list[str], timeout_s: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        applications = serve.status().applications
        statuses = {name: applications.get(name) for name in app_names}
        for name, status in statuses.items():
            if status is not None and status.status == ApplicationStatus.DEPLOY_FAILED:
                raise DeployFailed(f"application {name} failed to deploy: {status.message}")
        if all(status is not None and status.status == ApplicationStatus.RUNNING for status in statuses.values()):
            return
        time.sleep(0.5)
    raise DeployFailed(f"applications {app_names} were not running after {timeout_s:.0f}s")


def _application(config: dict[str, Any]) -> dict[str, Any]:
    for application in config["applications"]:
        if application.get("import_path") == IMPORT_PATH:
            return application
    raise ValueError(f"the config has no application with import_path {IMPORT_PATH}")

