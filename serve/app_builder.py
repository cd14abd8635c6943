"""Builds the Ray Serve application from one validated AppConfig.

``build_app`` is the ``import_path`` of the Serve config file (deploy/videoserve.yaml).
Per-deployment options here are defaults; the config file's ``deployments`` list
overrides them by name, in Ray Serve's own format, which is what ``serve run`` /
``serve deploy`` / KubeRay apply.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from engine.model_registry import model_task, resolve_model
from engine.model_spec import Task
from engine.parallel.parallel_dit import check_parallel_degree
from serve.app_config import AppConfig
from serve.denoiser_autoscaling import POLICY_IMPORT_PATH as DENOISER_POLICY
from serve.denoiser_placement import with_denoiser_placement
from serve.deployments.denoiser import DenoiserDeployment
from serve.deployments.image_conditioner import ImageConditionerDeployment
from serve.deployments.ingress import VideoAPIDeployment
from serve.deployments.post_processor import PostProcessorDeployment
from serve.deployments.prompt_expander import PromptExpanderDeployment
from serve.deployments.text_encoder import TextEncoderDeployment
from serve.deployments.vae_decoder import VaeDecoderDeployment

APP_NAME = "videoserve"


def _autoscaled(min_replicas: int, max_replicas: int, target: float) -> dict[str, Any]:
    return {"min_replicas": min_replicas, "max_replicas": max_replicas, "target_ongoing_requests": target}


# Sized for one small machine (fractional CPUs so every stage fits on 2 cores); GPU
# deployments override ray_actor_options in their config file.
DEFAULT_DEPLOYMENT_OPTIONS: dict[str, dict[str, Any]] = {
    "VideoAPI": {"num_replicas": 1, "max_ongoing_requests": 512, "ray_actor_options": {"num_cpus": 0.1}},
    "PromptExpander": {"max_ongoing_requests": 32, "ray_actor_options": {"num_cpus": 0.25},
                       "autoscaling_config": _autoscaled(1, 2, 8)},
    "TextEncoder": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.25},
                    "autoscaling_config": _autoscaled(1, 2, 4)},
    "ImageConditioner": {"max_ongoing_requests": 16, "ray_actor_options": {"num_cpus": 0.25},
                         "autoscaling_config": _autoscaled(1, 2, 4)},
    # Requests queue inside the batching engine (max_ongoing_requests is its intake), and
    # replicas scale on the engine's backlog, not on Serve's request count.
    "Denoiser": {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 0.5},
                 "autoscaling_config": {**_autoscaled(1, 2, 16),
                                        "policy": {"policy_function": DENOISER_POLICY,
                                                   "policy_kwargs": {"target_backlog_steps": 40}}}},
    "VaeDecoder": {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25},
                   "autoscaling_config": _autoscaled(1, 2, 2)},
    "PostProcessor": {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25},
                      "autoscaling_config": _autoscaled(1, 2, 2)},
}


def deployment_names(config: AppConfig) -> list[str]:
    """The deployments this config's application has (image conditioning only for I2V models)."""
    names = ["VideoAPI", "TextEncoder", "Denoiser", "VaeDecoder", "PostProcessor"]
    if model_task(config.model) is Task.IMAGE_TO_VIDEO:
        names.append("ImageConditioner")
    if config.prompt_expander.model is not None:
        names.append("PromptExpander")
    return names


def deployment_options(config: AppConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's default Serve options for this config (Denoiser bundles follow its parallel degree)."""
    options = {name: copy.deepcopy(DEFAULT_DEPLOYMENT_OPTIONS[name]) for name in deployment_names(config)}
    options["Denoiser"] = with_denoiser_placement(config.parallel.degree, options["Denoiser"])
    return options


def _check_parallel_degree(model_source: str, config: AppConfig) -> None:
    """A degree the DiT cannot split fails the deploy here, not in every rank at start-up.

    Only where the checkpoint is a local directory: a hub model's config is checked by the
    ranks themselves, which fetch it anyway.
    """
    transformer_config = Path(model_source) / "transformer" / "config.json"
    if config.parallel.degree > 1 and transformer_config.is_file():
        check_parallel_degree(json.loads(transformer_config.read_text()), config.parallel.mode, config.parallel.degree)


def build_app(args: dict[str, Any] | None = None) -> Application:
    config = AppConfig.model_validate(args or {})
    # Built-in presets are generated here once, not raced by every replica starting up.
    spec = resolve_model(config.model, config.resolved_cache_dir())
    _check_parallel_degree(spec.source, config)
    bound_config = config.model_dump(mode="json")
    options = deployment_options(config)

    def bind(name: str, cls, *handles):
        return serve.deployment(cls, name=name, **options[name]).bind(bound_config, *handles)

    text_encoder = bind("TextEncoder", TextEncoderDeployment)
    denoiser = bind("Denoiser", DenoiserDeployment)
    vae_decoder = bind("VaeDecoder", VaeDecoderDeployment)
    post_processor = bind("PostProcessor", PostProcessorDeployment)
    image_conditioner = bind("ImageConditioner", ImageConditionerDeployment) if spec.is_image_to_video else None
    prompt_expander = (
        bind("PromptExpander", PromptExpanderDeployment) if config.prompt_expander.model is not None else None
    )
    return bind("VideoAPI", VideoAPIDeployment, text_encoder, denoiser, vae_decoder, post_processor,
                image_conditioner, prompt_expander)
