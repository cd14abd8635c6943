"""Builds the Ray Serve application from one validated AppConfig.

``build_app`` is the ``import_path`` of the Serve config file (deploy/videoserve.yaml).
Per-deployment options here are defaults (the code's, then ``stage_options`` per kind of
stage, then a model's ``denoiser_options``); the config file's ``deployments`` list
overrides them by name, in Ray Serve's own format, which is what ``serve run`` /
``serve deploy`` / KubeRay apply. serve/model_stages.py decides which model stages exist
and what they are called.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from engine.models.model_spec import ModelSpec
from engine.parallel.parallel_dit import check_family_supports, check_parallel_degree
from serve.app_config import AppConfig
from serve.deployment_defaults import DEFAULT_DEPLOYMENT_OPTIONS, merge_options
from serve.deployments.colocated_pipeline import ColocatedPipelineDeployment
from serve.deployments.denoiser import DenoiserDeployment
from serve.deployments.image_conditioner import ImageConditionerDeployment
from serve.deployments.ingress import VideoAPIDeployment
from serve.deployments.post_processor import PostProcessorDeployment
from serve.deployments.prompt_expander import PromptExpanderDeployment
from serve.deployments.text_encoder import TextEncoderDeployment
from serve.deployments.vae_decoder import VaeDecoderDeployment
from serve.denoiser_placement import with_denoiser_placement
from serve.layout import resolved_layout
from serve.model_stages import StagePlan, app_stage_plan, served_spec

logger = logging.getLogger("ray.serve")

_STAGE_CLASSES = {
    "TextEncoder": TextEncoderDeployment,
    "ImageConditioner": ImageConditionerDeployment,
    "Denoiser": DenoiserDeployment,
    "VaeDecoder": VaeDecoderDeployment,
    "Pipeline": ColocatedPipelineDeployment,
}
# Kinds of deployment that hold a model's DiT engine: its denoiser_options and parallel placement apply.
_DENOISING_KINDS = ("Denoiser", "Pipeline")


def deployment_names(config: AppConfig, plan: StagePlan | None = None) -> list[str]:
    """The deployments this config's application has."""
    plan = plan or app_stage_plan(config)
    names = ["VideoAPI", *plan.names(), "PostProcessor"]
    if config.prompt_expander.model is not None:
        names.append("PromptExpander")
    return names


def deployment_options(config: AppConfig, plan: StagePlan | None = None) -> dict[str, dict[str, Any]]:
    """Each deployment's default Serve options for this config (Denoiser bundles follow its parallel degree)."""
    plan = plan or app_stage_plan(config)
    kinds = {deployment.name: deployment for deployment in plan.deployments}
    options = {}
    for name in deployment_names(config, plan):
        kind = kinds[name].kind if name in kinds else name
        merged = merge_options(copy.deepcopy(DEFAULT_DEPLOYMENT_OPTIONS[kind]), config.stage_options.get(kind, {}))
        if kind in _DENOISING_KINDS:
            merged = merge_options(merged, config.model_entry(kinds[name].model).denoiser_options)
            merged = with_denoiser_placement(config.parallel.degree, merged)
        options[name] = merged
    return options


def with_config_file_options(options: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]] | None,
                             runtime_env: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Each deployment's options with a config file's on top, as Serve applies a file.

    A field the file sets for a deployment replaces the code's (``ray_actor_options``
    whole, as Serve does); the application's ``runtime_env`` goes under every replica's,
    which wins where both set a key. A name the application does not have is refused.
    """
    unknown = sorted(set(overrides or {}) - set(options))
    if unknown:
        raise ValueError(f"deployments: {', '.join(unknown)} not in this application (it has {', '.join(options)})")
    merged = {name: {**option, **(overrides or {}).get(name, {})} for name, option in options.items()}
    if runtime_env:
        for name, option in merged.items():
            actor_options = dict(option.get("ray_actor_options") or {})
            actor_options["runtime_env"] = merge_options(runtime_env, actor_options.get("runtime_env") or {})
            merged[name] = {**option, "ray_actor_options": actor_options}
    return merged


def _check_parallel(spec: ModelSpec, config: AppConfig) -> None:
    """A degree the DiT cannot split fails the deploy here, not in every rank at start-up.

    The heads are checked only where the checkpoint is a local directory: a hub model's
    config is checked by the ranks themselves, which fetch it anyway.
    """
    if config.parallel.degree == 1:
        return
    check_family_supports(spec, config.parallel.mode)
    transformer_config = Path(spec.source) / "transformer" / "config.json"
    if transformer_config.is_file():
        check_parallel_degree(json.loads(transformer_config.read_text()), config.parallel.mode, config.parallel.degree)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve's builder (the config file's ``import_path``): ``args`` validated once, here."""
    return build_application(AppConfig.model_validate(args or {}))


def build_application(config: AppConfig, stage_classes: dict[str, type] | None = None,
                      deployment_overrides: dict[str, dict[str, Any]] | None = None,
                      runtime_env: dict[str, Any] | None = None) -> Application:
    """The application for ``config``, which every deployment receives as it is (typed).

    ``deployment_overrides`` (a config file's ``deployments``, by name) replace the default
    options field by field, as Serve applies a config file; ``runtime_env`` reaches every
    replica. ``stage_classes`` replaces a kind of model stage's deployment class (e.g. a
    subclass that raises, for a served test of failure handling).
    """
    classes = {**_STAGE_CLASSES, **(stage_classes or {})}
    # Built-in presets are generated here once, not raced by every replica starting up.
    for model in config.model_names():
        _check_parallel(served_spec(config, model), config)
    plan = app_stage_plan(config)
    layout, why = resolved_layout(config)
    logger.info("videoserve layout: %s (%s); deployments: %s", layout, why, ", ".join(plan.names()))
    options = with_config_file_options(deployment_options(config, plan), deployment_overrides, runtime_env)

    stages = {
        deployment.name: serve.deployment(classes[deployment.kind], name=deployment.name,
                                          **options[deployment.name]).bind(config, deployment.model)
        for deployment in plan.deployments
    }
    # model -> {stage kind: handle}: the ingress routes each job to its model's stages.
    routes = {model: {kind: stages[name] for kind, name in kinds.items()} for model, kinds in plan.routes.items()}
    post_processor = serve.deployment(PostProcessorDeployment, name="PostProcessor",
                                      **options["PostProcessor"]).bind(config)
    prompt_expander = None
    if config.prompt_expander.model is not None:
        prompt_expander = serve.deployment(PromptExpanderDeployment, name="PromptExpander",
                                           **options["PromptExpander"]).bind(config)
    return serve.deployment(VideoAPIDeployment, name="VideoAPI", **options["VideoAPI"]).bind(
        config, routes, post_processor, prompt_expander)

