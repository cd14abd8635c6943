"""The code's default Ray Serve options for each kind of deployment, and how overrides merge over them.

Light on purpose (no torch, no Ray): the Helm chart's generator and the config renderer read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serve.denoiser_autoscaling import POLICY_IMPORT_PATH as DENOISER_POLICY

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
    # The colocated layout's one replica per model (serve/layout.py): its encodes and decodes
    # queue on the engine's thread with its denoising steps, so it scales as the Denoiser does.
    "Pipeline": {"max_ongoing_requests": 64, "ray_actor_options": {"num_cpus": 1},
                 "autoscaling_config": {**_autoscaled(1, 2, 16),
                                        "policy": {"policy_function": DENOISER_POLICY,
                                                   "policy_kwargs": {"target_backlog_steps": 40}}}},
    "VaeDecoder": {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25},
                   "autoscaling_config": _autoscaled(1, 2, 2)},
    "PostProcessor": {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 0.25},
                      "autoscaling_config": _autoscaled(1, 2, 2)},
}


def merge_options(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: maps merge key by key, anything else (null included) replaces."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_options(merged[key], value)
        else:
            merged[key] = value
    return merged
