"""Offline validation of a rendered RayService, as strict as the cluster and stricter.

- The KubeRay v1.7.0 CRD's ray.io/v1 openAPIV3Schema (deploy/crds/), with
  ``additionalProperties: false`` added wherever a schema lists ``properties`` and says
  nothing of others: the API server would prune a misspelt field in silence, here it is
  an error.
- KubeRay's own checks on the name (at most 47 characters, a DNS-1035 label).
- serveConfigV2: Ray's ServeDeploySchema, every autoscaling_config through
  ray.serve.config.AutoscalingConfig (ServeDeploySchema leaves it a dict), option names
  Ray knows (Ray's models ignore unknown keys), and each application's ``args`` through
  videoserve's AppConfig (every application of a videoserve RayService is videoserve).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds" / "kuberay-v1.7.0"
RAYSERVICE_CRD = CRD_DIR / "ray.io_rayservices.yaml"
MAX_RAYSERVICE_NAME_LENGTH = 47  # KubeRay: 53 for a RayCluster, minus the 6-character suffix it appends
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class RayServiceInvalid(ValueError):
    """The RayService would be refused (or silently changed) by the API server, KubeRay or Ray Serve."""


def strict_schema(schema: Any) -> Any:
    """``schema`` with unknown properties refused wherever it lists known ones."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: strict_schema(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        strict["additionalProperties"] = False
    return strict


@functools.cache
def _crd_validator(crd_path: Path = RAYSERVICE_CRD, version: str = "v1") -> jsonschema.protocols.Validator:
    crd = yaml.load(crd_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    versions = {entry["name"]: entry for entry in crd["spec"]["versions"]}
    schema = strict_schema(copy.deepcopy(versions[version]["schema"]["openAPIV3Schema"]))
    return jsonschema.Draft7Validator(schema)


def crd_errors(manifest: Mapping[str, Any]) -> list[str]:
    """Every place the manifest breaks the strict CRD schema, as ``path: message``."""
    errors = sorted(_crd_validator().iter_errors(manifest), key=lambda error: list(map(str, error.absolute_path)))
    return [f"{_path(error.absolute_path)}: {error.message}" for error in errors]


def validate_rayservice(manifest: Mapping[str, Any]) -> None:
    """Raise RayServiceInvalid listing every problem; return None when the RayService is sound."""
    problems: list[str] = []
    if manifest.get("apiVersion") != "ray.io/v1" or manifest.get("kind") != "RayService":
        problems.append(f"expected apiVersion ray.io/v1, kind RayService; got {manifest.get('apiVersion')}, "
                        f"{manifest.get('kind')}")
    problems += crd_errors(manifest)
    name = (manifest.get("metadata") or {}).get("name") or ""
    if len(name) > MAX_RAYSERVICE_NAME_LENGTH or not _DNS_1035_LABEL.match(name):
        problems.append(f"metadata.name {name!r}: KubeRay needs a DNS-1035 label of at most "
                        f"{MAX_RAYSERVICE_NAME_LENGTH} characters")
    spec = manifest.get("spec") or {}
    problems += _ray_start_param_errors(spec.get("rayClusterConfig") or {})
    if isinstance(spec.get("serveConfigV2"), str):
        problems += serve_config_errors(yaml.safe_load(spec["serveConfigV2"]))
    else:
        problems.append("spec.serveConfigV2: missing (a YAML string)")
    if problems:
        raise RayServiceInvalid("RayService is invalid:\n- " + "\n- ".join(problems))


def serve_config_errors(config: Any) -> list[str]:
    """What Ray Serve (and videoserve's AppConfig) would refuse, or silently ignore, in a Serve config."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeDeploySchema

    from serve.app_config import AppConfig  # light: serve.app_builder would pull in torch and diffusers

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as error:
        return [f"serveConfigV2: {error}"]
    problems: list[str] = []
    for application in config["applications"]:
        where = f"serveConfigV2 application {application.get('name')!r}"
        for deployment in application.get("deployments") or []:
            at = f"{where} deployment {deployment.get('name')!r}"
            problems += _unknown_keys(deployment, DeploymentSchema.model_fields, at)
            problems += _unknown_keys(deployment.get("ray_actor_options") or {}, RayActorOptionsSchema.model_fields,
                                      f"{at} ray_actor_options")
            autoscaling = deployment.get("autoscaling_config")
            if autoscaling is not None:
                problems += _unknown_keys(autoscaling, AutoscalingConfig.model_fields, f"{at} autoscaling_config")
                try:
                    AutoscalingConfig(**autoscaling)
                except (ValidationError, TypeError, ValueError) as error:
                    problems.append(f"{at} autoscaling_config: {error}")
        try:
            AppConfig.model_validate(application.get("args") or {})
        except ValidationError as error:
            problems.append(f"{where} args (AppConfig): {error}")
    return problems


def group_custom_resources(ray_start_params: Mapping[str, str]) -> dict[str, float]:
    """The custom resources a group advertises, read the way the Ray autoscaler reads them on KubeRay.

    The value is JSON wrapped in one more pair of double quotes, with backslash-escaped inner quotes.
    """
    text = ray_start_params.get("resources")
    if text is None:
        return {}
    return json.loads(text[1:-1].replace("\\", ""))


def _ray_start_param_errors(cluster: Mapping[str, Any]) -> list[str]:
    groups = [("headGroupSpec", cluster.get("headGroupSpec") or {})]
    groups += [(f"workerGroupSpecs[{group.get('groupName')}]", group) for group in cluster.get("workerGroupSpecs") or []]
    problems = []
    for where, group in groups:
        params = group.get("rayStartParams") or {}
        text = params.get("resources")
        if not isinstance(text, str):
            continue
        try:
            if not (text.startswith('"') and text.endswith('"')):
                raise ValueError("not wrapped in double quotes")
            group_custom_resources(params)
        except ValueError as error:
            problems.append(f"spec.rayClusterConfig.{where}.rayStartParams.resources {text!r}: the Ray autoscaler "
                            f"reads '\"{{\\\"name\\\": amount}}\"' ({error})")
    return problems


def _unknown_keys(options: Mapping[str, Any], known: Mapping[str, Any], where: str) -> list[str]:
    return [f"{where}: unknown option {key!r} (Ray would ignore it)" for key in options if key not in known]


def _path(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"
