"""`videoserve deploy render|apply|status|wait|delete` against an in-memory Kubernetes API server.

No real API server can run here (no container engine, and nothing installable ships
kube-apiserver), so kmock's KubernetesEmulator stands in for one: a real HTTP server that
stores the objects sent to it and serves them back. Everything on our side is real: the typer
CLI, kubeconfig loading, the official `kubernetes` client, the Helm chart rendered by Helm's
SDK (helm/examples/cpu-demo.yaml) and the KubeRay CRD check. Where the emulator falls short of
a real server, the subclass below adds what is missing (server-side apply creating an object
that does not exist yet; Secrets keeping stringData as base64 data), and tests script what a
cluster would do: KubeRay writing
a RayService's `.status` (shapes checked against the v1.7.0 CRD's status schema), RBAC
answering 403, and a cluster without the KubeRay CRD (discovery of ray.io/v1 answers 404).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kmock import KubernetesEmulator, ResourceInfo, Server, action, resource
from typer.testing import CliRunner

from deploy.exit_codes import ExitCode
from deploy.helm_chart import render_manifests
from deploy.helm_set_values import SetValueError, parse_set_values
from deploy.kube_objects import KIND_ROUTES, RELEASE_LABEL, route_for
from deploy.rayservice_schema import strict_schema
from deploy.rayservice_status import Phase, RayServiceState, assess
from cli.main import app

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU_DEMO = REPO_ROOT / "helm" / "examples" / "cpu-demo.yaml"
CRD_FILE = REPO_ROOT / "deploy" / "crds" / "kuberay-v1.7.0" / "ray.io_rayservices.yaml"
NAMESPACE = "videoserve-test"  # the kubeconfig context's namespace
RELEASE = "demo"
RAYSERVICES = resource("ray.io/v1/rayservices")
SECRETS = resource("v1/secrets")


# ---------------------------------------------------------------- the stand-in API server


class ServerSideApplyEmulator(KubernetesEmulator):
    """kmock's emulator plus two things a real API server does: a server-side apply (PATCH,
    application/apply-patch+yaml) creates the object when it is not there yet (kmock answers
    404), and a Secret's write-only stringData is stored base64-encoded in data.
    ``before_request`` callbacks run on the server's loop, e.g. to play the operator's part."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.before_request: list[Callable[[Any], None]] = []

    async def _handle(self, request):
        for callback in self.before_request:
            callback(request)
        is_apply = request.headers.get("Content-Type", "").startswith("application/apply-patch")
        if request.method == "PATCH" and is_apply and request.resource is not None and request.name:
            key = (request.resource, request.namespace, request.name)
            async with self._lock:
                if key not in self._objects:
                    self._objects[key] = {}
                elif self._objects[key].deleted:
                    self._objects[key].create({})
        if request.resource == SECRETS and isinstance(request.data, dict):
            fold_string_data(request.data)  # in place: the emulator stores the request's own dict
        return await super()._handle(request)


def fold_string_data(secret: dict) -> dict:
    for key, value in (secret.pop("stringData", None) or {}).items():
        secret.setdefault("data", {})[key] = base64.b64encode(value.encode()).decode()
    return secret


class KubeApi:
    """The emulator running on its own thread (the CLI under test blocks the test's thread)."""

    def __init__(self, with_kuberay: bool = True) -> None:
        self._ready = threading.Event()
        self._with_kuberay = with_kuberay
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("kmock did not start")

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with ServerSideApplyEmulator() as emulator, Server(emulator) as server:
            if self._with_kuberay:  # what installing the KubeRay CRDs adds to discovery
                emulator.resources[RAYSERVICES] = ResourceInfo(kind="RayService", namespaced=True)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def on_loop(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the server's loop, between requests, and return its result."""

        async def call() -> Any:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    # What the cluster holds and was asked.
    def stored(self, kind_resource, name: str, namespace: str = NAMESPACE) -> dict | None:
        def read() -> dict | None:
            key = (kind_resource, namespace, name)
            if key not in self.emulator.objects or self.emulator.objects[key].deleted:
                return None
            return copy.deepcopy(self.emulator.objects[key].raw)

        return self.on_loop(read)

    def requests(self) -> list:
        return self.on_loop(lambda: list(self.emulator))

    def refuse(self, criteria: tuple, code: int, reason: str, message: str, details: dict | None = None) -> None:
        """Script the server to answer requests matching ``criteria`` with a Status error, as RBAC
        or a conflict would."""
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": code}
        body |= {"reason": reason, "message": message, **({"details": details} if details else {})}
        self.on_loop(lambda: self.emulator[criteria] << code << body)

    def put(self, kind_resource, obj: dict, namespace: str = NAMESPACE) -> None:
        self.on_loop(
            lambda: self.emulator.objects.__setitem__((kind_resource, namespace, obj["metadata"]["name"]), obj)
        )

    def set_status(self, name: str, status: dict, namespace: str = NAMESPACE, generation: int | None = None) -> None:
        """Play KubeRay: replace the RayService's .status (and bump metadata.generation if given)."""
        check_status_shape(status)

        def write() -> None:
            current = copy.deepcopy(self.emulator.objects[RAYSERVICES, namespace, name].raw)
            current["status"] = status
            if generation is not None:
                current["metadata"]["generation"] = generation
            self.emulator.objects[RAYSERVICES, namespace, name].patch({"status": None})
            self.emulator.objects[RAYSERVICES, namespace, name].patch(current)

        self.on_loop(write)


@pytest.fixture
def kube_api() -> Iterator[KubeApi]:
    api = KubeApi()
    yield api
    api.stop()


@pytest.fixture
def kube_api_without_kuberay() -> Iterator[KubeApi]:
    api = KubeApi(with_kuberay=False)
    yield api
    api.stop()


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "deployer", "user": {"token": "test-token"}}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "test", "user": "deployer", "namespace": NAMESPACE}}
                ],
                "current-context": "test",
            }
        )
    )
    return path


@pytest.fixture
def kubeconfig(kube_api, tmp_path) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", kube_api.url)


def deploy(*args: str, env: dict[str, str | None] | None = None):
    """``videoserve deploy ARGS`` through the real CLI entry point."""
    return CliRunner(env={"COLUMNS": "240", **(env or {})}).invoke(app, ["deploy", *map(str, args)])


def assert_one_line_error(result, code: ExitCode, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    *progress, message = result.stderr.strip().splitlines()
    assert message.startswith("error: "), result.stderr
    assert all(line.startswith("[") for line in progress), result.stderr  # only wait's progress lines before it
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------- rendered chart and statuses


@pytest.fixture(scope="module")
def demo_manifests() -> list[dict]:
    """The chart as the CLI renders it for the CPU demo, release "demo", into the test namespace."""
    return render_manifests([CPU_DEMO], release=RELEASE, namespace=NAMESPACE)


def rayservice_in(manifests: list[dict]) -> dict:
    return next(manifest for manifest in manifests if manifest["kind"] == "RayService")


def kmock_resource(manifest: dict):
    route = route_for(manifest)
    return resource(f"{route.api_version}/{route.plural}")


# Statuses the tests write are checked against the CRD (unknown fields refused), so they cannot
# drift from the shape KubeRay v1.7 writes.
_STATUS_SCHEMA = strict_schema(
    next(version for version in yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"] if version["name"] == "v1")[
        "schema"
    ]["openAPIV3Schema"]["properties"]["status"]
)


def check_status_shape(status: dict) -> None:
    jsonschema.validate(status, _STATUS_SCHEMA)


def condition(condition_type: str, status: str, reason: str, message: str = "") -> dict:
    return {
        "type": condition_type,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
        "observedGeneration": 1,
    }


def app_status(status: str, message: str = "", **deployments: tuple[str, str]) -> dict:
    return {
        "status": status,
        "message": message,
        "serveDeploymentStatuses": {
            name: {"status": state, "message": text} for name, (state, text) in deployments.items()
        },
    }


def service_status(applications: dict, ready: bool, reason: str = "", message: str = "", **extra: Any) -> dict:
    status = {
        "conditions": [
            condition(
                "Ready",
                "True" if ready else "False",
                reason or ("NonZeroServeEndpoints" if ready else "Initializing"),
                message,
            )
        ],
        "activeServiceStatus": {"rayClusterName": "demo-raycluster-abcde", "applicationStatuses": applications},
        "numServeEndpoints": 1 if ready else 0,
        "observedGeneration": 1,
    }
    if ready:
        status["serviceStatus"] = "Running"
    status.update(extra)
    return status


READY = service_status(
    {"videoserve": app_status("RUNNING", Ingress=("HEALTHY", ""), Denoiser=("HEALTHY", ""))}, ready=True
)
DEPLOYING = service_status(
    {"videoserve": app_status("DEPLOYING", Denoiser=("UPDATING", "Deploying: waiting for 1 replica"))}, ready=False
)


@pytest.fixture
def seeded(kube_api, demo_manifests) -> dict:
    """The release's RayService stored as apply would leave it (before KubeRay writes a status)."""
    rayservice = copy.deepcopy(rayservice_in(demo_manifests))
    rayservice["metadata"]["namespace"] = NAMESPACE
    kube_api.put(RAYSERVICES, rayservice)
    return rayservice


def generated_secret_values(values_files: list[Path]) -> dict[str, set[str]]:
    """{Secret name: keys} whose values the chart draws at random (two renders differ there)."""
    first, second = (render_manifests(values_files, release=RELEASE, namespace=NAMESPACE) for _ in range(2))
    return {
        one["metadata"]["name"]: {key for key, value in one["stringData"].items() if two["stringData"][key] != value}
        for one, two in zip(first, second)
        if one["kind"] == "Secret" and one.get("stringData") != two.get("stringData")
    }


def without(secret_keys: set[str], stored: dict | None) -> dict | None:
    """``stored`` less the Secret data keys in ``secret_keys`` (which must be there)."""
    if stored is None or not secret_keys:
        return stored
    assert secret_keys <= set(stored.get("data", {})), stored
    return {**stored, "data": {key: value for key, value in stored["data"].items() if key not in secret_keys}}


def as_stored(manifest: dict, namespace: str = NAMESPACE) -> dict:
    """What the API server keeps of an applied manifest (in kmock: all of it, Secrets folded)."""
    stored = copy.deepcopy({**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}})
    return fold_string_data(stored) if manifest["kind"] == "Secret" else stored


def masked(manifests: list[dict]) -> list[dict]:
    """The manifests with the Secret values the chart draws at random blanked out."""
    generated = generated_secret_values([CPU_DEMO])
    manifests = copy.deepcopy(manifests)
    for manifest in manifests:
        for key in generated.get(manifest["metadata"]["name"], ()) if manifest["kind"] == "Secret" else ():
            manifest["stringData"][key] = "<generated>"
    return manifests


# ---------------------------------------------------------------- render


def test_render_prints_the_whole_chart(tmp_path, demo_manifests):
    result = deploy("render", "-f", CPU_DEMO, "--release", RELEASE, "--namespace", NAMESPACE)
    assert result.exit_code == 0, result.output
    assert masked(list(yaml.safe_load_all(result.stdout))) == masked(demo_manifests)
    assert sum(manifest["kind"] == "RayService" for manifest in demo_manifests) == 1

    output = tmp_path / "manifests.yaml"
    result = deploy("render", "-f", CPU_DEMO, "--release", RELEASE, "-n", NAMESPACE, "--output", output)
    assert result.exit_code == 0, result.output
    assert masked(list(yaml.safe_load_all(output.read_text()))) == masked(demo_manifests)


def test_render_set_values_reach_the_chart():
    plain = render_manifests([CPU_DEMO], release=RELEASE)
    renamed = deploy("render", "-f", CPU_DEMO, "--release", RELEASE, "--set", "fullnameOverride=renamed-service")
    assert renamed.exit_code == 0, renamed.output
    names = {manifest["metadata"]["name"] for manifest in yaml.safe_load_all(renamed.stdout)}
    assert rayservice_in(list(yaml.safe_load_all(renamed.stdout)))["metadata"]["name"] == "renamed-service"
    assert names != {manifest["metadata"]["name"] for manifest in plain}


def test_render_refuses_a_malformed_set():
    assert_one_line_error(deploy("render", "--set", "no-equals-sign"), ExitCode.BAD_INPUT, "expected key=value")


def test_set_values_are_typed_like_helm():
    assert parse_set_values(["a.b=1,c=true", "d={x,2}", "e=0.5", "f=007", "g=a\\,b", "h=null"]) == {
        "a.b": 1,
        "c": True,
        "d": ["x", 2],
        "e": "0.5",
        "f": "007",
        "g": "a,b",
        "h": None,
    }
    with pytest.raises(SetValueError, match="list indices"):
        parse_set_values(["a[0]=1"])


@pytest.mark.parametrize("values_file", [None, *sorted((REPO_ROOT / "helm" / "examples").glob("*.yaml"))])
def test_every_kind_the_chart_renders_has_an_api_route(values_file):
    manifests = render_manifests([] if values_file is None else [values_file])
    known = {(route.api_version, route.kind) for route in KIND_ROUTES}
    assert {(manifest["apiVersion"], manifest["kind"]) for manifest in manifests} <= known


# ---------------------------------------------------------------- apply


def test_apply_server_side_applies_every_rendered_object(kube_api, kubeconfig, demo_manifests):
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output

    generated = generated_secret_values([CPU_DEMO])
    for manifest in demo_manifests:  # no --namespace: the kubeconfig context's namespace
        name = manifest["metadata"]["name"]
        random_keys = generated.get(name, set()) if manifest["kind"] == "Secret" else set()
        stored = kube_api.stored(kmock_resource(manifest), name)
        assert without(random_keys, stored) == without(random_keys, as_stored(manifest)), name
        assert f"{manifest['kind']}/{name} applied" in result.stdout
    patches = [request for request in kube_api.requests() if request.method == "PATCH"]
    assert len(patches) == len(demo_manifests)
    for request in patches:
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        assert request.params == {"fieldManager": "videoserve"}
    rayservice_patch = next(request for request in patches if request.resource == RAYSERVICES)
    assert (
        rayservice_patch.url.path
        == f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayservices/{rayservice_in(demo_manifests)['metadata']['name']}"
    )
    kinds_in_order = [request.data["kind"] for request in patches]
    assert kinds_in_order.index("RayService") > max(
        index for index, kind in enumerate(kinds_in_order) if kind in ("Secret", "ConfigMap", "Service")
    ), kinds_in_order

    again = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig, "--force-conflicts")
    assert again.exit_code == 0, again.output
    forced = [request for request in kube_api.requests() if request.method == "PATCH"][len(patches) :]
    assert len(forced) == len(demo_manifests)
    assert all(request.params == {"fieldManager": "videoserve", "force": "true"} for request in forced)


def test_apply_into_an_explicit_namespace(kube_api, kubeconfig, demo_manifests):
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "-n", "elsewhere", "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output
    rayservice = rayservice_in(demo_manifests)
    stored = kube_api.stored(RAYSERVICES, rayservice["metadata"]["name"], namespace="elsewhere")
    assert stored is not None and stored["metadata"]["namespace"] == "elsewhere"
    assert kube_api.stored(RAYSERVICES, rayservice["metadata"]["name"]) is None


def test_apply_keeps_the_password_the_chart_generated_on_the_first_apply(kube_api, kubeconfig):
    """The chart keeps a generated Redis password with Helm's lookup; rendered offline, apply does that job."""
    generated = generated_secret_values([])
    assert generated, "with default values the chart generates the bundled Redis password"
    ((secret, keys),) = generated.items()

    assert deploy("apply", "--release", RELEASE, "--kubeconfig", kubeconfig).exit_code == 0
    first = kube_api.stored(SECRETS, secret)["data"]
    again = deploy("apply", "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert again.exit_code == 0, again.output
    assert f"Secret/{secret} applied (kept the cluster's generated {', '.join(sorted(keys))})" in again.stdout
    assert kube_api.stored(SECRETS, secret)["data"] == first

    chosen = deploy(
        "apply", "--release", RELEASE, "--kubeconfig", kubeconfig, "--set", "redis.auth.password=chosen-one"
    )
    assert chosen.exit_code == 0, chosen.output
    assert {base64.b64decode(value).decode() for value in kube_api.stored(SECRETS, secret)["data"].values()} == {
        "chosen-one"
    }


def test_apply_without_kuberay_applies_nothing(kube_api_without_kuberay, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api_without_kuberay.url)
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.CRD_MISSING, "ray.io/v1 rayservices", "install the KubeRay operator v1.7+")
    assert not [request for request in kube_api_without_kuberay.requests() if request.method == "PATCH"]


def test_apply_monitors_need_the_prometheus_operator(kube_api, kubeconfig):
    with_monitor = ("-f", CPU_DEMO, "--release", RELEASE, "--set", "metrics.podMonitor.enabled=true")
    without_operator = deploy("apply", *with_monitor, "--kubeconfig", kubeconfig)
    assert_one_line_error(without_operator, ExitCode.CRD_MISSING, "PodMonitor", "Prometheus Operator")
    assert not [request for request in kube_api.requests() if request.method == "PATCH"]

    kube_api.on_loop(
        lambda: kube_api.emulator.resources.__setitem__(
            "monitoring.coreos.com/v1/podmonitors", ResourceInfo(kind="PodMonitor", namespaced=True)
        )
    )
    result = deploy("apply", *with_monitor, "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output
    monitor = next(
        manifest
        for manifest in render_manifests([CPU_DEMO], {"metrics.podMonitor.enabled": True}, RELEASE, NAMESPACE)
        if manifest["kind"] == "PodMonitor"
    )
    stored = kube_api.stored(resource("monitoring.coreos.com/v1/podmonitors"), monitor["metadata"]["name"])
    assert stored == as_stored(monitor)


def test_apply_forbidden_names_verb_resource_and_namespace(kube_api, kubeconfig):
    denial = 'rayservices.ray.io "demo" is forbidden: User "deployer" cannot patch resource "rayservices"'
    kube_api.refuse(("patch", RAYSERVICES), 403, "Forbidden", denial)
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(
        result, ExitCode.FORBIDDEN, "RBAC", "cannot patch rayservices.ray.io", f"namespace '{NAMESPACE}'", denial
    )


def test_apply_into_a_namespace_that_does_not_exist(kube_api, kubeconfig):
    namespaces = {"name": "nowhere", "kind": "namespaces"}
    kube_api.refuse(("patch",), 404, "NotFound", 'namespaces "nowhere" not found', details=namespaces)
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "-n", "nowhere", "--kubeconfig", kubeconfig)
    assert_one_line_error(
        result, ExitCode.NOT_FOUND, "namespace 'nowhere' does not exist", "kubectl create namespace nowhere"
    )


def test_apply_conflict_points_at_force_conflicts(kube_api, kubeconfig):
    conflict = 'Apply failed with 1 conflict: conflict with "kubectl-edit": .spec.serveConfigV2'
    kube_api.refuse(("patch", RAYSERVICES), 409, "Conflict", conflict)
    result = deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.API_ERROR, 'conflict with "kubectl-edit"', "--force-conflicts")


def test_apply_refuses_an_invalid_rayservice_before_touching_the_cluster(kube_api, kubeconfig):
    result = deploy("apply", "-f", CPU_DEMO, "--set", "fullnameOverride=Not_A_DNS_Label", "--kubeconfig", kubeconfig)
    assert_one_line_error(
        result, ExitCode.BAD_INPUT, "rendered RayService is invalid", "metadata.name 'Not_A_DNS_Label'"
    )
    assert kube_api.requests() == []


def test_apply_refuses_bad_values_before_touching_the_cluster(kube_api, kubeconfig, tmp_path):
    not_a_mapping = tmp_path / "values.yaml"
    not_a_mapping.write_text("- a list\n")
    result = deploy("apply", "-f", not_a_mapping, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.BAD_INPUT, "mapping")
    assert kube_api.requests() == []


# ---------------------------------------------------------------- no cluster


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "command", [["apply", "-f", CPU_DEMO], ["status"], ["wait", "--timeout", "5"], ["delete", "-f", CPU_DEMO]]
)
def test_no_cluster_listening(tmp_path, command):
    port = free_port()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")
    result = deploy(*command, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(
        result, ExitCode.NO_CLUSTER, f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}", "refused"
    )


def test_no_kubeconfig_and_not_in_a_pod(tmp_path):
    env = {"KUBECONFIG": str(tmp_path / "absent"), "KUBERNETES_SERVICE_HOST": None}
    result = deploy("status", "--release", RELEASE, env=env)
    assert_one_line_error(result, ExitCode.NO_CLUSTER, "no Kubernetes cluster configured", str(tmp_path / "absent"))
    missing_file = deploy("status", "--kubeconfig", tmp_path / "nope")
    assert_one_line_error(missing_file, ExitCode.NO_CLUSTER, "does not exist")
    unknown_context = deploy(
        "status", "--kubeconfig", write_kubeconfig(tmp_path / "kc", "http://127.0.0.1:1"), "--context", "prod"
    )
    assert_one_line_error(unknown_context, ExitCode.NO_CLUSTER, "context 'prod'", "test")


# ---------------------------------------------------------------- status


def test_status_shows_applications_and_deployments(kube_api, kubeconfig, seeded):
    upgrading = service_status(
        {
            "videoserve": app_status(
                "RUNNING", Ingress=("HEALTHY", ""), TextEncoder=("HEALTHY", ""), Denoiser=("HEALTHY", "")
            )
        },
        ready=True,
        pendingServiceStatus={
            "rayClusterName": "demo-raycluster-fghij",
            "applicationStatuses": {
                "videoserve": app_status(
                    "DEPLOYING", "Deploying app 'videoserve'.", Denoiser=("UPDATING", "Waiting for 1 replica to start")
                )
            },
        },
    )
    upgrading["conditions"].append(condition("UpgradeInProgress", "True", "BothActivePendingClustersExist"))
    kube_api.set_status(seeded["metadata"]["name"], upgrading)

    result = deploy("status", "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for fragment in (
        f"RayService {NAMESPACE}/{seeded['metadata']['name']}",
        "Ready=True (NonZeroServeEndpoints)",
        "upgrade in progress to RayCluster demo-raycluster-fghij",
        "active RayCluster=demo-raycluster-abcde",
        "TextEncoder",
        "Waiting for 1 replica to start",
        "Deploying app 'videoserve'.",
        "UPDATING",
        "DEPLOYING",
    ):
        assert fragment in out, (fragment, out)
    rows = [line for line in out.splitlines() if "Denoiser" in line]
    assert any("active" not in row and "UPDATING" in row for row in rows) and any("HEALTHY" in row for row in rows)


def test_status_of_a_release_that_is_not_there(kube_api, kubeconfig, seeded):
    result = deploy("status", "--release", "other", "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.NOT_FOUND, "RayService of release 'other' not found", NAMESPACE)


def test_status_without_kuberay(kube_api_without_kuberay, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api_without_kuberay.url)
    result = deploy("status", "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.CRD_MISSING, "KubeRay operator v1.7+")


def test_status_forbidden(kube_api, kubeconfig, seeded):
    kube_api.refuse(("list", RAYSERVICES), 403, "Forbidden", 'User "deployer" cannot list resource "rayservices"')
    result = deploy("status", "--release", RELEASE, "-n", "team-a", "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.FORBIDDEN, "cannot list rayservices.ray.io in namespace 'team-a'", "RBAC")


# ---------------------------------------------------------------- wait


def operator_writes_at_poll(kube_api: KubeApi, poll: int, name: str, status: dict) -> list:
    """Play KubeRay: it writes ``status`` just before the ``poll``-th read of the RayService is answered."""
    seen: list = []

    def on_request(request) -> None:
        if request.resource == RAYSERVICES and request.action == action.LIST:
            seen.append(request)
            if len(seen) == poll:
                current = kube_api.emulator.objects[RAYSERVICES, NAMESPACE, name]
                current.patch({"status": None})
                current.patch({"status": status})

    check_status_shape(status)
    kube_api.on_loop(lambda: kube_api.emulator.before_request.append(on_request))
    return seen


def test_wait_returns_once_the_operator_reports_ready(kube_api, kubeconfig, seeded):
    kube_api.set_status(seeded["metadata"]["name"], DEPLOYING)
    polls = operator_writes_at_poll(kube_api, 3, seeded["metadata"]["name"], READY)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "60", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert len(polls) == 3  # two DEPLOYING answers, then the ready one
    assert "application videoserve DEPLOYING" in result.stderr
    assert "is ready: 1 application(s) RUNNING" in result.stdout


def test_wait_accepts_service_status_running_from_older_operators(kube_api, kubeconfig, seeded):
    legacy = {
        "serviceStatus": "Running",
        "activeServiceStatus": {"applicationStatuses": {"videoserve": app_status("RUNNING", Ingress=("HEALTHY", ""))}},
    }
    kube_api.set_status(seeded["metadata"]["name"], legacy)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "60", "--interval", "0.05")
    assert result.exit_code == 0, result.output


def test_wait_fails_fast_on_deploy_failed(kube_api, kubeconfig, seeded):
    failure = "Failed to start replica: CUDA out of memory while loading the transformer"
    failed = service_status(
        {"videoserve": app_status("DEPLOY_FAILED", failure, Denoiser=("DEPLOY_FAILED", failure))}, ready=False
    )
    kube_api.set_status(seeded["metadata"]["name"], failed)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "120", "--interval", "0.05")
    assert_one_line_error(result, ExitCode.DEPLOY_FAILED, "application videoserve is DEPLOY_FAILED", failure)
    polls = [
        request for request in kube_api.requests() if request.resource == RAYSERVICES and request.action == action.LIST
    ]
    assert len(polls) == 1  # no second look: DEPLOY_FAILED does not heal by waiting


def test_wait_ignores_a_failure_from_before_the_latest_apply(kube_api, kubeconfig, seeded):
    stale_failure = service_status({"videoserve": app_status("DEPLOY_FAILED", "old config broke")}, ready=False)
    kube_api.set_status(seeded["metadata"]["name"], stale_failure, generation=2)  # observedGeneration stays 1
    fresh = copy.deepcopy(READY)
    fresh["observedGeneration"] = 2
    operator_writes_at_poll(kube_api, 2, seeded["metadata"]["name"], fresh)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "60", "--interval", "0.05")
    assert result.exit_code == 0, result.output
    assert "has not caught up with the latest spec" in result.stderr


def test_wait_times_out_with_the_last_status(kube_api, kubeconfig, seeded):
    kube_api.set_status(seeded["metadata"]["name"], DEPLOYING)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "0.3", "--interval", "0.05")
    assert_one_line_error(result, ExitCode.TIMEOUT, "not ready after 0.3s", "application videoserve DEPLOYING")
    assert "Deploying: waiting for 1 replica" in result.stdout and "UPDATING" in result.stdout


def test_wait_fails_when_unhealthy_until_the_timeout(kube_api, kubeconfig, seeded):
    sick = service_status(
        {
            "videoserve": app_status(
                "UNHEALTHY", "replica health check failed", Denoiser=("UNHEALTHY", "health check failed")
            )
        },
        ready=True,
    )
    kube_api.set_status(seeded["metadata"]["name"], sick)
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "0.3", "--interval", "0.05")
    assert_one_line_error(result, ExitCode.DEPLOY_FAILED, "still unhealthy after 0.3s", "replica health check failed")


def test_wait_for_a_release_that_is_not_there(kube_api, kubeconfig):
    result = deploy("wait", "--release", RELEASE, "--kubeconfig", kubeconfig, "--timeout", "5")
    assert_one_line_error(result, ExitCode.NOT_FOUND, f"RayService of release '{RELEASE}' not found")


# ---------------------------------------------------------------- delete


def test_delete_removes_the_release(kube_api, kubeconfig, demo_manifests):
    assert deploy("apply", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig).exit_code == 0
    gone_before = demo_manifests[0]
    kube_api.on_loop(
        lambda: kube_api.emulator.objects[
            kmock_resource(gone_before), NAMESPACE, gone_before["metadata"]["name"]
        ].delete()
    )

    result = deploy("delete", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert result.exit_code == 0, result.output
    for manifest in demo_manifests:
        assert kube_api.stored(kmock_resource(manifest), manifest["metadata"]["name"]) is None
    assert f"{gone_before['kind']}/{gone_before['metadata']['name']} already gone" in result.stdout
    rayservice = rayservice_in(demo_manifests)
    assert f"RayService/{rayservice['metadata']['name']} deleted" in result.stdout
    deletes = [request for request in kube_api.requests() if request.method == "DELETE"]
    assert len(deletes) == len(demo_manifests)
    assert all(request.params == {"propagationPolicy": "Background"} for request in deletes)

    again = deploy("delete", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(
        again, ExitCode.NOT_FOUND, f"RayService of release '{RELEASE}' not found", "nothing to delete"
    )


def test_delete_forbidden(kube_api, kubeconfig, seeded):
    kube_api.refuse(("delete", RAYSERVICES), 403, "Forbidden", 'User "deployer" cannot delete resource "rayservices"')
    result = deploy("delete", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.FORBIDDEN, f"cannot delete rayservices.ray.io in namespace '{NAMESPACE}'")


def test_delete_without_kuberay(kube_api_without_kuberay, tmp_path):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube_api_without_kuberay.url)
    result = deploy("delete", "-f", CPU_DEMO, "--release", RELEASE, "--kubeconfig", kubeconfig)
    assert_one_line_error(result, ExitCode.CRD_MISSING, "KubeRay operator v1.7+")


# ---------------------------------------------------------------- the readiness rule itself


def state(status: dict, generation: int = 1) -> RayServiceState:
    return RayServiceState.from_object(
        {"metadata": {"name": "x", "namespace": "n", "generation": generation}, "status": status}
    )


def test_readiness_rule():
    assert assess(state({})).phase is Phase.PROGRESSING
    assert assess(state(READY)).phase is Phase.READY
    assert assess(state(DEPLOYING)).phase is Phase.PROGRESSING
    not_ready_yet = service_status({"videoserve": app_status("RUNNING")}, ready=False, message="0 serve endpoints")
    assert assess(state(not_ready_yet)).summary.startswith("Ready=False (Initializing): 0 serve endpoints")
    gave_up = service_status(
        {}, ready=False, reason="InitializingTimeout", message="RayService did not become ready in 30m"
    )
    assert assess(state(gave_up)).phase is Phase.FAILED
    pending = copy.deepcopy(READY)
    pending["pendingServiceStatus"] = {"rayClusterName": "demo-raycluster-new", "applicationStatuses": {}}
    assert assess(state(pending)).phase is Phase.PROGRESSING
    pending["pendingServiceStatus"]["applicationStatuses"] = {"videoserve": app_status("DEPLOY_FAILED", "bad image")}
    verdict = assess(state(pending))
    assert (
        verdict.phase is Phase.FAILED and "on the pending cluster" in verdict.summary and "bad image" in verdict.summary
    )
    for status in (READY, DEPLOYING, not_ready_yet, gave_up, pending):
        check_status_shape(status)


def test_release_label_is_on_every_rendered_object(demo_manifests):
    assert all(manifest["metadata"]["labels"][RELEASE_LABEL] == RELEASE for manifest in demo_manifests)
