"""The deploy CLI's exit codes and the one error type that carries them (kept free of the
kubernetes client so that `videoserve --help` does not pay for importing it)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes of ``videoserve deploy`` (also listed in its --help)."""

    OK = 0
    DEPLOY_FAILED = 1  # wait: an application reported DEPLOY_FAILED, or stayed UNHEALTHY to the end
    BAD_INPUT = 2  # values, --set or the rendered manifests were refused (typer's usage errors are 2 too)
    NO_CLUSTER = 3  # no kubeconfig / in-cluster config, or the API server cannot be reached
    CRD_MISSING = 4  # ray.io/v1 RayService (or another kind the chart renders) is not served
    FORBIDDEN = 5  # the API server refused the credentials (401) or RBAC denied the call (403)
    NOT_FOUND = 6  # the release's RayService (or its namespace) is not there
    TIMEOUT = 7  # wait: not ready before --timeout
    API_ERROR = 8  # any other refusal: conflicts, invalid objects, server errors


class DeployError(Exception):
    """A failure the CLI reports as one line and ``exit_code``."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
