"""The Helm chart (helm/videoserve): lint, render, and what the rendered objects promise.

Everything runs for real: Helm's Go SDK in-process (helm_python) lints and renders the
chart, the rendered RayService is checked against KubeRay's v1.7.0 CRD schema (unknown
fields refused), Ray Serve's own models and AppConfig, and the other objects go through
the official kubernetes client's models. No cluster is involved.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from deploy import chart_files
from deploy.helm_chart import CHART_DIR, ChartRenderError, lint_chart, rayservice_of, render_manifests
from deploy.rayservice_schema import (
    RAYSERVICE_CRD,
    RayServiceInvalid,
    crd_errors,
    group_custom_resources,
    validate_rayservice,
)
from serve.app_builder import deployment_names
from serve.deployment_defaults import DEFAULT_DEPLOYMENT_OPTIONS
from serve.app_config import AppConfig
from serve.denoiser_placement import PlacementMismatch, with_denoiser_placement
from tests.support.repo import REPO_ROOT

EXAMPLES = REPO_ROOT / "helm" / "examples"
VALUES_FILES = {
    "default": [],
    "wan14b-4xh100": [EXAMPLES / "wan14b-4xh100.yaml"],
    "wan1.3b-1gpu": [EXAMPLES / "wan1.3b-1gpu.yaml"],
    "cpu-demo": [EXAMPLES / "cpu-demo.yaml"],
    "wan22-a14b-4xh100": [EXAMPLES / "wan22-a14b-4xh100.yaml"],
}
GROUPS = ("dit", "aux", "cpu")


@functools.cache
def _render(files: tuple[Path, ...], set_json: str) -> tuple[dict, ...]:
    return tuple(render_manifests(list(files), json.loads(set_json)))


def render(files=(), set_values: dict | None = None) -> list[dict[str, Any]]:
    """Rendered manifests (cached per input; callers get their own copy)."""
    return copy.deepcopy(list(_render(tuple(files), json.dumps(set_values or {}, sort_keys=True))))


def serve_config(manifests) -> dict[str, Any]:
    return yaml.safe_load(rayservice_of(manifests)["spec"]["serveConfigV2"])


def application(manifests) -> dict[str, Any]:
    (app,) = serve_config(manifests)["applications"]
    return app


def deployments(manifests) -> dict[str, dict[str, Any]]:
    return {deployment["name"]: deployment for deployment in application(manifests)["deployments"]}


def worker_group(manifests, name: str) -> dict[str, Any]:
    groups = rayservice_of(manifests)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return next(group for group in groups if group["groupName"] == name)


def ray_group_specs(manifests) -> dict[str, dict[str, Any]]:
    cluster = rayservice_of(manifests)["spec"]["rayClusterConfig"]
    return {"head": cluster["headGroupSpec"], **{group["groupName"]: group for group in cluster["workerGroupSpecs"]}}


def container(group_spec) -> dict[str, Any]:
    return group_spec["template"]["spec"]["containers"][0]


def objects_of(manifests, kind: str) -> list[dict[str, Any]]:
    return [manifest for manifest in manifests if manifest["kind"] == kind]


# --- lint and render ------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUES_FILES)
def test_lint_strict_passes(name):
    assert lint_chart(VALUES_FILES[name], strict=True) == []


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_rendered_rayservice_validates(name):
    manifests = render(VALUES_FILES[name])
    rayservice = rayservice_of(manifests)
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    validate_rayservice(rayservice)  # strict CRD schema, ServeDeploySchema, AutoscalingConfig, AppConfig


def test_serve_config_carries_the_codes_defaults_and_the_charts_args():
    manifests = render()
    app = application(manifests)
    config = serve_config(manifests)
    assert (app["name"], app["import_path"], app["route_prefix"]) == ("videoserve", "serve.app_builder:build_app", "/")
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    rendered = deployments(manifests)
    # Options the values do not touch are the code's: e.g. the Denoiser's backlog policy.
    assert rendered["Denoiser"]["autoscaling_config"] == DEFAULT_DEPLOYMENT_OPTIONS["Denoiser"]["autoscaling_config"]
    assert rendered["VideoAPI"]["max_ongoing_requests"] == DEFAULT_DEPLOYMENT_OPTIONS["VideoAPI"]["max_ongoing_requests"]
    args = AppConfig.model_validate(app["args"])
    assert args.storage.state_dir == "/var/lib/videoserve"
    assert args.storage.artifact_dir == "/var/lib/videoserve/artifacts"
    assert args.storage.job_store_url == "redis://videoserve-redis.default.svc:6379/1"
    assert args.storage.job_store_password_env == "VIDEOSERVE_REDIS_PASSWORD"
    assert args.cache_dir == "/var/cache/videoserve"
    assert args.api.api_keys_env is None and args.webhooks.secret_env is None  # no secrets given


@pytest.mark.parametrize("name", VALUES_FILES)
def test_gpu_values_do_not_keep_lossless_frames_and_the_cpu_demo_does(name):
    args = AppConfig.model_validate(application(render(VALUES_FILES[name]))["args"])
    assert args.storage.keep_frames is (args.device != "cuda")
    assert args.storage.state_dir == "/var/lib/videoserve"  # merged with the chart's storage, not replacing it


def test_user_args_win_over_the_charts_and_deployment_overrides_merge_over_the_codes():
    manifests = render(set_values={
        "serve": {"args": {"storage": {"artifact_dir": "/mnt/elsewhere"}},
                  "deployments": {"TextEncoder": {"autoscaling_config": {"max_replicas": 7}},
                                  "PostProcessor": {"num_replicas": 3, "autoscaling_config": None}}},
    })
    args = application(manifests)["args"]
    assert args["storage"]["artifact_dir"] == "/mnt/elsewhere"
    assert args["storage"]["state_dir"] == "/var/lib/videoserve"
    rendered = deployments(manifests)
    expected = {**DEFAULT_DEPLOYMENT_OPTIONS["TextEncoder"]["autoscaling_config"], "max_replicas": 7}
    assert rendered["TextEncoder"]["autoscaling_config"] == expected
    # null reaches Serve as null: the code's autoscaling is switched off, the count pinned.
    assert rendered["PostProcessor"]["autoscaling_config"] is None
    assert rendered["PostProcessor"]["num_replicas"] == 3
    validate_rayservice(rayservice_of(manifests))


def test_num_replicas_with_autoscaling_on_is_refused():
    with pytest.raises(ChartRenderError, match="serve.deployments.TextEncoder sets num_replicas.*autoscaling_config: null"):
        render(set_values={"serve.deployments.TextEncoder.num_replicas": 2})


# --- which deployments ------------------------------------------------------------------


def _image_to_video_directory(tmp_path: Path) -> Path:
    # What model_task() reads of a diffusers directory: its pipeline class.
    directory = tmp_path / "my-i2v-model"
    directory.mkdir()
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    return directory


NAME_CASES = {
    **{name: (files, {}) for name, files in VALUES_FILES.items()},
    "i2v-preset-with-expander": ([EXAMPLES / "wan14b-4xh100.yaml"],
                                 {"serve.args.models": ["wan2.1-i2v-14b-480p"],
                                  "serve.args.prompt_expander.model": "tiny-llm"}),
    "tiny-i2v-cpu": ([EXAMPLES / "cpu-demo.yaml"], {"serve.args.models": ["tiny-i2v"]}),
    "t2v-with-expander": ([], {"serve.args.prompt_expander.model": "Qwen/Qwen2.5-1.5B-Instruct"}),
}


@pytest.mark.parametrize("case", NAME_CASES)
def test_deployment_names_are_pythons(case):
    files, set_values = NAME_CASES[case]
    manifests = render(files, set_values)
    args = AppConfig.model_validate(application(manifests)["args"])
    listed = [d["name"] for d in application(manifests)["deployments"]]
    if len(args.models) == 1:
        assert listed == deployment_names(args)
    else:  # the model stages' names come from the checkpoints (args.stage_options carries their options)
        python = deployment_names(args)
        assert listed == [name for name in python if name.split("-")[0] not in args.stage_options]
        assert set(args.stage_options) == {name.split("-")[0] for name in python} - set(listed)


def test_local_image_to_video_directory_needs_the_flag(tmp_path):
    directory = str(_image_to_video_directory(tmp_path))
    without = render(set_values={"serve.args.models": [directory]})
    flagged = render(set_values={"serve.args.models": [directory], "serve.imageToVideo": True})
    python_names = deployment_names(AppConfig(models=[directory], layout="disaggregated"))  # the chart's default
    assert "ImageConditioner" in python_names
    assert [d["name"] for d in application(flagged)["deployments"]] == python_names
    assert "ImageConditioner" not in deployments(without)


def test_image_to_video_flag_on_a_text_to_video_preset_is_refused():
    with pytest.raises(ChartRenderError, match=r"serve.imageToVideo is true but serve.args.models\[0\] wan2.1-t2v-14b"):
        render(set_values={"serve.imageToVideo": True})


def test_several_models_put_the_per_kind_options_into_stage_options():
    manifests = render([EXAMPLES / "wan22-a14b-4xh100.yaml"])
    app = application(manifests)
    # The shared and per-model stages are named in Python, from the checkpoints: not listed here.
    assert [d["name"] for d in app["deployments"]] == ["VideoAPI", "PostProcessor"]
    config = AppConfig.model_validate(app["args"])
    assert config.model_names() == ["wan2.2-t2v-a14b", "wan2.2-i2v-a14b"]
    denoiser = config.stage_options["Denoiser"]
    assert denoiser["ray_actor_options"]["resources"] == {"videoserve_dit": 1}
    assert denoiser["placement_group_bundles"] == [{"CPU": 4, "GPU": 1, "videoserve_dit": 1}] * 4
    assert denoiser["autoscaling_config"]["max_replicas"] == 4
    assert config.stage_options["TextEncoder"]["ray_actor_options"]["resources"] == {"videoserve_aux": 1}
    # What the builder gives each model's Denoiser: the kind's options, then the model's own.
    from serve.app_builder import deployment_options
    from serve.model_stages import StageDeployment, StagePlan

    plan = StagePlan(tuple(StageDeployment("Denoiser", f"Denoiser-{model}", model, (model,))
                           for model in config.model_names()),
                     {model: {"Denoiser": f"Denoiser-{model}"} for model in config.model_names()})
    options = deployment_options(config, plan)
    assert options["Denoiser-wan2.2-t2v-a14b"]["autoscaling_config"]["max_replicas"] == 4
    assert options["Denoiser-wan2.2-i2v-a14b"]["autoscaling_config"]["max_replicas"] == 2
    assert options["Denoiser-wan2.2-i2v-a14b"]["placement_group_bundles"] == denoiser["placement_group_bundles"]


# --- Denoiser placement -------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tensor", "sequence"])
@pytest.mark.parametrize("degree", [1, 2, 4])
def test_denoiser_bundles_follow_the_parallel_degree(degree, mode):
    other = "sequence" if mode == "tensor" else "tensor"
    manifests = render(set_values={"serve": {"args": {"parallel": {mode: degree, other: 1}}}})
    denoiser = deployments(manifests)["Denoiser"]
    pod_gpus = int(container(worker_group(manifests, "dit"))["resources"]["limits"]["nvidia.com/gpu"])
    assert pod_gpus >= degree
    unplaced = {key: value for key, value in denoiser.items()
                if key not in ("name", "placement_group_bundles", "placement_group_strategy")}
    expected = with_denoiser_placement(degree, unplaced)
    if degree == 1:
        # One rank: the replica alone holds its GPU, no placement group (as in Python).
        assert "placement_group_bundles" not in denoiser
        assert denoiser["ray_actor_options"]["num_gpus"] == 1
        assert expected == unplaced
    else:
        bundles = denoiser["placement_group_bundles"]
        assert len(bundles) == degree
        assert all(bundle["GPU"] == 1 and bundle["videoserve_dit"] == 1 for bundle in bundles)
        assert denoiser["placement_group_strategy"] == "STRICT_PACK"
        assert bundles == expected["placement_group_bundles"]
        assert denoiser["placement_group_strategy"] == expected["placement_group_strategy"]
    validate_rayservice(rayservice_of(manifests))


@pytest.mark.parametrize("parallel", [{"cfg": 2, "sequence": 1}, {"cfg": 2, "sequence": 2}], ids=["cfg2", "cfg2xsp2"])
def test_cfg_parallel_bundles_agree_with_python(parallel):
    parallel = {"tensor": 1, **parallel}
    manifests = render(set_values={"serve": {"args": {"parallel": parallel}}})
    degree = AppConfig.model_validate({"parallel": parallel}).parallel.degree
    assert degree == 2 * parallel["sequence"]
    denoiser = deployments(manifests)["Denoiser"]
    unplaced = {key: value for key, value in denoiser.items()
                if key not in ("name", "placement_group_bundles", "placement_group_strategy")}
    expected = with_denoiser_placement(degree, unplaced)
    assert denoiser["placement_group_bundles"] == expected["placement_group_bundles"]
    assert len(denoiser["placement_group_bundles"]) == degree
    assert denoiser["placement_group_strategy"] == expected["placement_group_strategy"] == "STRICT_PACK"
    assert AppConfig.model_validate(application(manifests)["args"]).parallel.degree == degree
    validate_rayservice(rayservice_of(manifests))


@pytest.mark.parametrize("parallel,chart_message,python_message", [
    ({"cfg": 2, "tensor": 2, "sequence": 1}, "serve.args.parallel: cfg 2 combines with sequence, not with tensor",
     "parallel: cfg 2 combines with sequence, not with tensor"),
    ({"cfg": 3, "sequence": 1}, "/serve/args/parallel/cfg': maximum: got 3, want 2",
     "parallel.cfg\n  Input should be less than or equal to 2"),
])
def test_parallel_layouts_python_refuses_the_chart_refuses(parallel, chart_message, python_message):
    with pytest.raises(ChartRenderError, match=re.escape(chart_message)):
        render(set_values={"serve": {"args": {"parallel": parallel}}})
    with pytest.raises(ValueError, match=re.escape(python_message)):
        AppConfig.model_validate({"parallel": parallel})


def test_a_cfg_gang_larger_than_a_dit_pod_is_refused():
    with pytest.raises(ChartRenderError, match=re.escape("the Denoiser needs 8 GPUs on one pod (parallel degree 8")):
        render(set_values={"serve": {"args": {"parallel": {"cfg": 2, "sequence": 4}}}})


def test_too_few_gpus_on_a_dit_pod_is_refused():
    with pytest.raises(ChartRenderError) as refused:
        render(set_values={"serve.args.parallel.sequence": 4, "workerGroups.dit.gpus": 2})
    message = str(refused.value)
    assert "the Denoiser needs 4 GPUs on one pod" in message
    assert "a dit pod has 2 (workerGroups.dit.gpus)" in message


def test_a_stage_asking_more_gpus_than_its_pods_have_is_refused():
    with pytest.raises(ChartRenderError, match="serve.deployments.VaeDecoder asks for num_gpus 2 but a aux pod has 1 GPUs"):
        render(set_values={"serve.deployments.VaeDecoder.ray_actor_options.num_gpus": 2})


_RANK = {"CPU": 0.5, "GPU": 1, "videoserve_dit": 1}
DISAGREEING_BUNDLES = {
    "too few bundles": ({"placement_group_bundles": [_RANK, _RANK], "placement_group_strategy": "STRICT_PACK"},
                        "has 2 bundles but parallel degree (serve.args.parallel) is 4"),
    "not STRICT_PACK": ({"placement_group_bundles": [_RANK] * 4, "placement_group_strategy": "PACK"},
                        "placement_group_strategy must be STRICT_PACK for 4 ranks, not PACK"),
    "first bundle too small": ({"placement_group_bundles": [{"CPU": 0.5, "GPU": 1}] * 4,
                                "placement_group_strategy": "STRICT_PACK"},
                               "the replica (rank 0) runs in the first bundle"),
    "uneven GPUs": ({"placement_group_bundles": [_RANK, _RANK, _RANK, {**_RANK, "GPU": 2}],
                     "placement_group_strategy": "STRICT_PACK"},
                    "ask for different GPU counts"),
}


@pytest.mark.parametrize("case", DISAGREEING_BUNDLES)
def test_bundles_that_disagree_with_the_degree_are_refused_by_chart_and_python(case):
    override, message = DISAGREEING_BUNDLES[case]
    with pytest.raises(ChartRenderError, match=re.escape(message)):
        render(set_values={"serve.deployments.Denoiser": override})
    # Python refuses the same options (as pinned by the chart: the group resource added).
    options = {**override, "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 1, "resources": {"videoserve_dit": 1}}}
    with pytest.raises(PlacementMismatch):
        with_denoiser_placement(4, options)


def test_bundles_that_agree_with_the_degree_are_kept_as_given():
    given = [{"CPU": 2, "GPU": 1, "videoserve_dit": 1}] * 4
    manifests = render(set_values={"serve.deployments.Denoiser": {"placement_group_bundles": given,
                                                                   "placement_group_strategy": "STRICT_PACK"}})
    assert deployments(manifests)["Denoiser"]["placement_group_bundles"] == given


# --- strictness of values and of the CRD check ----------------------------------------------


@pytest.mark.parametrize("key,named", [
    ("workerGroups.dit.gpu", "'gpu'"),
    ("serviceMonitor", "'serviceMonitor'"),
    ("serve.args.parallel.sequenze", "'sequenze'"),
    ("serve.args.modle", "'modle'"),
    ("serve.deployments.Denoiser.autoscaling_config.max_replica", "'max_replica'"),
    ("serve.deployments.Denoizer.num_replicas", "'Denoizer'"),
])
def test_misspelt_keys_are_rejected_by_lint_naming_the_key(key, named):
    findings = lint_chart(set_values={key: 1}, strict=True)
    assert findings and any(named in finding for finding in findings), findings
    with pytest.raises(ChartRenderError, match=named):
        render(set_values={key: 1})


def test_the_crd_check_rejects_unknown_fields_the_raw_crd_would_prune():
    rayservice = rayservice_of(render())
    typo = copy.deepcopy(rayservice)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    typo["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    crd = yaml.load(RAYSERVICE_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    raw = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    assert jsonschema.Draft7Validator(raw).is_valid(typo)  # the published schema alone lets both through
    errors = crd_errors(typo)
    assert any("'maxReplica' was unexpected" in error for error in errors)
    assert any("'imagePullPolcy' was unexpected" in error for error in errors)
    with pytest.raises(RayServiceInvalid, match="maxReplica"):
        validate_rayservice(typo)
    wrong_type = copy.deepcopy(rayservice)
    wrong_type["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] = "yes"
    with pytest.raises(RayServiceInvalid, match="enableInTreeAutoscaling"):
        validate_rayservice(wrong_type)


def test_the_serve_checks_reject_what_ray_would_ignore_or_refuse():
    rayservice = rayservice_of(render())
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    config["applications"][0]["deployments"][1]["autoscaling_config"]["max_replica"] = 3
    config["applications"][0]["args"]["modle"] = "tiny"
    broken = copy.deepcopy(rayservice)
    broken["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    with pytest.raises(RayServiceInvalid) as refused:
        validate_rayservice(broken)
    assert "unknown option 'max_replica'" in str(refused.value)
    assert "modle" in str(refused.value)


# --- generated files ----------------------------------------------------------------------


def test_generated_chart_files_are_in_sync():
    assert chart_files.stale_files() == [], "run: python -m deploy.chart_files"
    defaults = yaml.safe_load((CHART_DIR / "files" / "serve-defaults.yaml").read_text())
    assert defaults["deployments"] == DEFAULT_DEPLOYMENT_OPTIONS
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    assert set(schema["properties"]["serve"]["properties"]["args"]["properties"]) == set(AppConfig.model_fields)
    if chart_files.DASHBOARD_SOURCE.is_file():
        assert chart_files.DASHBOARD_COPY.read_text() == chart_files.DASHBOARD_SOURCE.read_text()


# --- the other objects ----------------------------------------------------------------------

CORE_MODELS = {"Service": "V1Service", "Ingress": "V1Ingress", "PersistentVolumeClaim": "V1PersistentVolumeClaim",
               "StatefulSet": "V1StatefulSet", "Secret": "V1Secret", "ConfigMap": "V1ConfigMap"}


def _as_strings(node):
    if isinstance(node, dict):
        return {key: _as_strings(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_as_strings(item) for item in node]
    return node if isinstance(node, (str, type(None))) else str(node)


def _through_kubernetes_model(obj: dict, model: str) -> dict:
    """obj deserialized into the client's model and serialized back (fields it does not know are lost)."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    parsed = client.deserialize(json.dumps(obj), model, "application/json")
    return client.sanitize_for_serialization(parsed)


@pytest.mark.parametrize("name", VALUES_FILES)
def test_other_objects_parse_through_the_kubernetes_models(name):
    manifests = render(VALUES_FILES[name], {"apiKeys.keys": ["k1"], "webhooks.secret": "whsec_dGVzdA=="})
    checked = set()
    for manifest in manifests:
        if manifest["kind"] in CORE_MODELS:
            # A round trip equal to the input: every field is one the model knows, with its type.
            assert _as_strings(_through_kubernetes_model(manifest, CORE_MODELS[manifest["kind"]])) == _as_strings(manifest)
            checked.add(manifest["kind"])
    for group, spec in ray_group_specs(manifests).items():
        template = spec["template"]
        assert _as_strings(_through_kubernetes_model(template, "V1PodTemplateSpec")) == _as_strings(template), group
    assert {"Service", "StatefulSet", "Secret", "ConfigMap", "PersistentVolumeClaim"} <= checked
    if name == "wan14b-4xh100":
        assert "Ingress" in checked


def test_gpu_groups_carry_scheduling_and_limits_from_values():
    tolerations = [{"key": "gpu-pool", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}]
    manifests = render(set_values={"workerGroups": {
        "dit": {"gpus": 8, "nodeSelector": {"pool": "h100"}, "tolerations": tolerations},
        "aux": {"gpus": 2, "nodeSelector": {"pool": "l4"}},
        "cpu": {"resources": {"requests": {"cpu": 0.5}, "limits": {"cpu": 3}}},
    }})
    dit, aux, cpu = (worker_group(manifests, name) for name in GROUPS)
    # Maps merge with the defaults (as Helm merges values); a null drops a default key.
    assert dit["template"]["spec"]["nodeSelector"]["pool"] == "h100"
    assert dit["template"]["spec"]["tolerations"] == tolerations
    assert container(dit)["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert container(dit)["resources"]["limits"]["memory"] == "256Gi"  # values' resources kept beside the GPUs
    assert aux["template"]["spec"]["nodeSelector"]["pool"] == "l4"
    assert container(aux)["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert cpu["rayStartParams"]["num-gpus"] == "0"
    assert container(cpu)["resources"]["limits"]["cpu"] == "3"  # quantities rendered as the strings the API states
    assert container(cpu)["resources"]["requests"]["cpu"] == "0.5"
    head = ray_group_specs(manifests)["head"]
    assert "nvidia.com/gpu" not in container(head)["resources"].get("limits", {})
    assert head["rayStartParams"]["num-gpus"] == "0"


def test_each_stage_is_pinned_to_its_groups_resource():
    for files in VALUES_FILES.values():
        manifests = render(files)
        values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
        for path in files:
            values["serve"]["stageGroups"].update((yaml.safe_load(path.read_text())["serve"]).get("stageGroups", {}))
        groups = ray_group_specs(manifests)
        for group, spec in groups.items():
            assert group_custom_resources(spec["rayStartParams"]) == {f"videoserve_{group}": 1000}
        for name, deployment in deployments(manifests).items():
            group = values["serve"]["stageGroups"][name]
            assert deployment["ray_actor_options"]["resources"] == {f"videoserve_{group}": 1}
            assert group in groups
        assert deployments(manifests)["VideoAPI"]["ray_actor_options"]["resources"] == {"videoserve_head": 1}


def test_a_stage_on_a_disabled_group_is_refused():
    with pytest.raises(ChartRenderError, match="serve.stageGroups.PostProcessor is cpu but workerGroups.cpu.enabled is false"):
        render(set_values={"workerGroups.cpu.enabled": False})


def test_autoscaling_and_group_bounds():
    manifests = render(set_values={"workerGroups.dit.minReplicas": 2, "workerGroups.dit.maxReplicas": 6})
    cluster = rayservice_of(manifests)["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"] == {"upscalingMode": "Default", "idleTimeoutSeconds": 300}
    dit = worker_group(manifests, "dit")
    assert (dit["minReplicas"], dit["maxReplicas"], dit["replicas"]) == (2, 6, 2)
    with pytest.raises(ChartRenderError, match="workerGroups.aux.minReplicas \\(3\\) is above maxReplicas \\(2\\)"):
        render(set_values={"workerGroups.aux.minReplicas": 3})


def test_api_service_is_the_rayservices_serve_service_and_monitors_select_it():
    manifests = render(VALUES_FILES["wan14b-4xh100"])
    rayservice = rayservice_of(manifests)
    serve_service = rayservice["spec"]["serveService"]
    assert serve_service["metadata"]["name"] == "videoserve-api"
    assert serve_service["spec"]["ports"] == [{"name": "serve", "port": 8000}]
    assert not [s for s in objects_of(manifests, "Service") if s["metadata"]["name"] == "videoserve-api"]
    head_ports = {port["name"]: port["containerPort"] for port in container(ray_group_specs(manifests)["head"])["ports"]}
    assert head_ports["serve"] == 8000 and head_ports["metrics"] == 8080
    (ingress,) = objects_of(manifests, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "videoserve-api", "port": {"name": "serve"}}
    (service_monitor,) = objects_of(manifests, "ServiceMonitor")
    wanted = service_monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= serve_service["metadata"]["labels"].items()
    endpoint = service_monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("serve", "/metrics")
    (pod_monitor,) = objects_of(manifests, "PodMonitor")
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    for group, spec in ray_group_specs(manifests).items():
        labels = spec["template"]["metadata"]["labels"]
        assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= labels.items(), group
        assert "videoserve.io/ray-group" in labels
        assert "metrics" in {port["name"] for port in container(spec)["ports"]}


def test_grafana_dashboard_configmap():
    (configmap,) = [c for c in objects_of(render(), "ConfigMap") if c["metadata"]["name"] == "videoserve-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = configmap["data"].values()
    assert json.loads(text) == json.loads(chart_files.DASHBOARD_COPY.read_text())
    assert not [c for c in objects_of(render(set_values={"metrics.grafanaDashboard.enabled": False}), "ConfigMap")]


# --- secrets, Redis, storage ----------------------------------------------------------------


def _env(spec) -> dict[str, Any]:
    return {entry["name"]: entry for entry in container(spec).get("env", [])}


def test_api_keys_and_webhook_secret_from_values_reach_only_the_ingress_pods_as_env():
    manifests = render(set_values={"apiKeys.keys": ["key-a", "key-b"], "webhooks.secret": "whsec_c2VjcmV0"})
    (secret,) = [s for s in objects_of(manifests, "Secret") if s["metadata"]["name"] == "videoserve-app"]
    assert secret["stringData"] == {"api-keys": "key-a,key-b", "webhook-secret": "whsec_c2VjcmV0"}
    args = AppConfig.model_validate(application(manifests)["args"])
    assert (args.api.api_keys_env, args.webhooks.secret_env) == ("VIDEOSERVE_API_KEYS", "VIDEOSERVE_WEBHOOK_SECRET")
    assert "whsec_c2VjcmV0" not in rayservice_of(manifests)["spec"]["serveConfigV2"]
    groups = ray_group_specs(manifests)
    head_env = _env(groups["head"])
    assert head_env["VIDEOSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "videoserve-app", "key": "api-keys"}
    assert head_env["VIDEOSERVE_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "webhook-secret"
    assert head_env["VIDEOSERVE_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "videoserve-redis",
                                                                                  "key": "redis-password"}
    for group in GROUPS:
        assert not {"VIDEOSERVE_API_KEYS", "VIDEOSERVE_WEBHOOK_SECRET"} & set(_env(groups[group]))


def test_existing_secrets_are_referenced_not_created():
    manifests = render(set_values={"apiKeys": {"existingSecret": "my-keys", "existingSecretKey": "keys"},
                                   "redis.auth": {"existingSecret": "my-redis", "existingSecretKey": "pw"}})
    assert [s["metadata"]["name"] for s in objects_of(manifests, "Secret")] == []
    head_env = _env(ray_group_specs(manifests)["head"])
    assert head_env["VIDEOSERVE_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "my-keys", "key": "keys"}
    gcs = rayservice_of(manifests)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisPassword"]["valueFrom"]["secretKeyRef"] == {"name": "my-redis", "key": "pw"}


def test_bundled_redis_backs_gcs_fault_tolerance_and_the_job_store():
    manifests = render()
    (statefulset,) = objects_of(manifests, "StatefulSet")
    redis_env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "videoserve-redis", "key": "redis-password"}
    (secret,) = [s for s in objects_of(manifests, "Secret") if s["metadata"]["name"] == "videoserve-redis"]
    assert len(secret["stringData"]["redis-password"]) == 32
    gcs = rayservice_of(manifests)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"] == "redis://videoserve-redis.default.svc:6379"
    given = render(set_values={"redis.auth.password": "s3cret"})
    assert [s["stringData"] for s in objects_of(given, "Secret")] == [{"redis-password": "s3cret"}]


def test_external_redis_and_no_redis():
    external = render(set_values={"redis.external": {"address": "redis.example:6380", "tls": True},
                                  "redis.auth.existingSecret": "ext"})
    assert not objects_of(external, "StatefulSet")
    gcs = rayservice_of(external)["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]
    assert gcs["redisAddress"] == "rediss://redis.example:6380"
    assert application(external)["args"]["storage"]["job_store_url"] == "rediss://redis.example:6380/1"
    without = render(set_values={"redis.enabled": False})
    assert not objects_of(without, "StatefulSet") and not objects_of(without, "Secret")
    assert "gcsFaultToleranceOptions" not in rayservice_of(without)["spec"]["rayClusterConfig"]
    storage_args = AppConfig.model_validate(application(without)["args"]).storage
    assert storage_args.job_store_url is None and storage_args.job_store_password_env is None
    assert "VIDEOSERVE_REDIS_PASSWORD" not in _env(ray_group_specs(without)["head"])
    validate_rayservice(rayservice_of(without))


def test_storage_and_model_cache_are_mounted_on_every_ray_pod():
    manifests = render()
    claims = {c["metadata"]["name"]: c for c in objects_of(manifests, "PersistentVolumeClaim")}
    assert claims["videoserve-artifacts"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert set(claims) == {"videoserve-artifacts", "videoserve-model-cache"}
    for group, spec in ray_group_specs(manifests).items():
        mounts = {m["name"]: m["mountPath"] for m in container(spec)["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert mounts["storage"] == "/var/lib/videoserve", group
        assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "videoserve-artifacts"
        assert mounts["model-cache"] == "/var/cache/videoserve"
        assert _env(spec)["HF_HOME"]["value"] == "/var/cache/videoserve/huggingface"
    existing = render(set_values={"storage.existingClaim": "s3-backed", "modelCache.enabled": False})
    assert not objects_of(existing, "PersistentVolumeClaim")
    head = ray_group_specs(existing)["head"]
    volumes = {v["name"]: v for v in head["template"]["spec"]["volumes"]}
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "s3-backed"
    assert "model-cache" not in volumes and "HF_HOME" not in _env(head)
    assert "cache_dir" not in application(existing)["args"]


def test_release_name_and_namespace_flow_into_names():
    manifests = render_manifests(release="prod", namespace="video")
    assert rayservice_of(manifests)["metadata"]["name"] == "prod-videoserve"
    assert application(manifests)["args"]["storage"]["job_store_url"] == "redis://prod-videoserve-redis.video.svc:6379/1"
    long = render_manifests(release="a-very-long-release-name-for-a-video-service-x")
    name = rayservice_of(long)["metadata"]["name"]
    assert len(name) <= 47
    validate_rayservice(rayservice_of(long))
