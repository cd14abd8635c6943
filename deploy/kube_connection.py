"""Connecting to a cluster the way kubectl does: --kubeconfig, else $KUBECONFIG, else
~/.kube/config, else the pod's service account (in-cluster)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException

from deploy.exit_codes import DeployError, ExitCode

DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# (connect, read) seconds for every request: an unroutable server must fail, not hang.
REQUEST_TIMEOUT = (10.0, 60.0)


@dataclass(frozen=True)
class KubeConnection:
    api_client: client.ApiClient
    namespace: str  # the context's namespace (kubectl's default), else "default"
    server: str  # the API server URL, for messages


def connect(kubeconfig: Path | None = None, context: str | None = None) -> KubeConnection:
    configuration = client.Configuration()
    # Only a couple of quick retries: a refused connection should be reported, not retried for a minute.
    configuration.retries = 2
    try:
        namespace = _load(configuration, kubeconfig, context)
    except ConfigException as error:
        raise DeployError(f"cannot load the Kubernetes configuration: {error}", ExitCode.NO_CLUSTER) from None
    return KubeConnection(client.ApiClient(configuration), namespace, configuration.host)


def _load(configuration: client.Configuration, kubeconfig: Path | None, context: str | None) -> str:
    if kubeconfig is not None:
        if not kubeconfig.expanduser().is_file():
            raise DeployError(f"kubeconfig {kubeconfig} does not exist", ExitCode.NO_CLUSTER)
        return _load_kubeconfig(configuration, str(kubeconfig.expanduser()), context)
    # Read at call time: the client's own KUBE_CONFIG_DEFAULT_LOCATION froze $KUBECONFIG at import.
    paths = os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    if any(Path(path).expanduser().is_file() for path in paths.split(os.pathsep) if path):
        return _load_kubeconfig(configuration, paths, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        if context is not None:
            raise DeployError(f"--context {context} needs a kubeconfig, and none was found", ExitCode.NO_CLUSTER)
        config.load_incluster_config(client_configuration=configuration)
        return _in_cluster_namespace()
    raise DeployError(
        f"no Kubernetes cluster configured: no kubeconfig at {paths} (pass --kubeconfig or set KUBECONFIG) "
        "and not running inside a pod",
        ExitCode.NO_CLUSTER,
    )


def _load_kubeconfig(configuration: client.Configuration, paths: str, context: str | None) -> str:
    contexts, current = config.list_kube_config_contexts(config_file=paths)
    chosen = current if context is None else next((entry for entry in contexts if entry["name"] == context), None)
    if chosen is None:
        names = ", ".join(entry["name"] for entry in contexts) or "none"
        raise DeployError(f"context {context!r} is not in the kubeconfig (it has: {names})", ExitCode.NO_CLUSTER)
    config.load_kube_config(
        config_file=paths, context=chosen["name"], client_configuration=configuration, persist_config=False
    )
    return (chosen.get("context") or {}).get("namespace") or "default"


def _in_cluster_namespace() -> str:
    try:
        return IN_CLUSTER_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"
