"""Which layout an app runs in: every model's stages in one replica (colocated), or one deployment per stage."""

from __future__ import annotations

from typing import Literal

from serve.app_config import AppConfig

Layout = Literal["colocated", "disaggregated"]


def resolved_layout(config: AppConfig) -> tuple[Layout, str]:
    """The layout and why (said at start-up). ``auto`` is colocated where the app has one device per
    replica to give: a CPU machine, or a node with one GPU (or a config naming one, ``cuda:N``)."""
    if config.layout != "auto":
        return config.layout, "set by layout in the app's config"
    degree = config.parallel.degree
    if degree > 1:
        return "disaggregated", f"each Denoiser replica is a gang of {degree} devices (parallel)"
    device = config.resolved_device()
    if device == "cuda":
        import torch

        count = torch.cuda.device_count()
        if count > 1:
            return "disaggregated", f"{count} GPUs on this node: each stage gets its own replicas"
        return "colocated", "one GPU on this node: the model stages share it in one replica per model"
    if device.startswith("cuda:"):
        return "colocated", f"one device ({device}): the model stages share it in one replica per model"
    return "colocated", "a CPU machine: the model stages share its cores in one replica per model"
