"""Which stage deployments an app has, which models each one serves, and what each is called.

Every model gets its own Denoiser (each scales on its own). A text encoder, image
conditioner or VAE decoder is deployed once for all the models whose weights for it are
byte-identical (engine/models/component_fingerprint.py) and that run it the same way (same
family, text length, conditioning layout): the UMT5 encoder every Wan model shares, the
Wan 2.1 VAE that Wan 2.2 A14B reuses. A model whose files are not on this machine yet
(a hub preset not downloaded) shares nothing.

In the colocated layout (serve/layout.py) every model's stages are one deployment of kind
``Pipeline`` instead, which answers each stage's calls.

Names: a one-model app keeps the plain stage names (``Denoiser``, ``TextEncoder``, ...);
in a several-model app each model stage is named after the first model, in ``models``
order, that it serves (``Denoiser-tiny-ltx``, ``TextEncoder-tiny``). ``videoserve config
render`` prints them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from engine.models.model_spec import ModelSpec, Task
from serve.app_config import AppConfig

# The per-model stages, in the order a request passes them; the stage each loads weights for.
MODEL_STAGE_KINDS = {
    "TextEncoder": "text_encoder",
    "ImageConditioner": "image_conditioner",
    "Denoiser": "denoiser",
    "VaeDecoder": "vae_decoder",
}


@dataclass(frozen=True)
class StageDeployment:
    kind: str  # TextEncoder, ImageConditioner, Denoiser, VaeDecoder
    name: str  # the Serve deployment's name
    model: str  # the model whose weights it loads
    serves: tuple[str, ...]  # every model whose requests it takes


@dataclass(frozen=True)
class StagePlan:
    deployments: tuple[StageDeployment, ...]
    # model -> {stage kind: deployment name}
    routes: dict[str, dict[str, str]]

    def names(self) -> list[str]:
        return [deployment.name for deployment in self.deployments]


def served_spec(config: AppConfig, model: str) -> ModelSpec:
    """The model's spec under the name the app serves it as (building a built-in preset on first use)."""
    from engine.models.model_registry import resolve_model

    entry = config.model_entry(model)
    return replace(resolve_model(entry.source, config.resolved_cache_dir()), name=model)


def stage_kinds(tasks: frozenset[Task]) -> list[str]:
    return [kind for kind in MODEL_STAGE_KINDS if kind != "ImageConditioner" or Task.IMAGE_TO_VIDEO in tasks]


def stage_identity(spec: ModelSpec, kind: str) -> Hashable | None:
    """What makes two models' ``kind`` stages interchangeable; None when it cannot be known (nothing is shared)."""
    from engine.models.component_fingerprint import components_fingerprint

    if kind == "Denoiser":
        return None
    components = spec.components_of(MODEL_STAGE_KINDS[kind])
    root = _local_root(spec, components)
    if root is None:
        return None
    try:
        fingerprint = components_fingerprint(root, components)
    except OSError:
        return None
    how = {
        "TextEncoder": (spec.geometry.text_max_length,),
        # Wan 2.1/A14B, TI2V and LTX lay the same first frame out differently.
        "ImageConditioner": (spec.pipeline_class, tuple(sorted(task.value for task in spec.tasks))),
        "VaeDecoder": (spec.defaults.decode_timestep, spec.defaults.decode_noise_scale),
    }[kind]
    return spec.family, kind, how, fingerprint


def plan_stages(config: AppConfig, tasks_of: Callable[[str], frozenset[Task]],
                identity_of: Callable[[str, str], Hashable | None]) -> StagePlan:
    """The app's model-stage deployments: ``tasks_of(model)`` and ``identity_of(model, kind)`` describe each model."""
    names = config.model_names()
    single = len(names) == 1
    groups: dict[tuple[str, Hashable], list[str]] = {}
    routes: dict[str, dict[str, str]] = {model: {} for model in names}
    for model in names:
        for kind in stage_kinds(tasks_of(model)):
            identity = identity_of(model, kind)
            key = (kind, ("model", model) if identity is None else identity)
            groups.setdefault(key, []).append(model)
    deployments = []
    for (kind, _), members in groups.items():
        name = kind if single else f"{kind}-{_safe(members[0])}"
        deployments.append(StageDeployment(kind=kind, name=name, model=members[0], serves=tuple(members)))
        for model in members:
            routes[model][kind] = name
    order = list(MODEL_STAGE_KINDS)
    deployments.sort(key=lambda deployment: (order.index(deployment.kind), names.index(deployment.model)))
    return StagePlan(tuple(deployments), routes)


COLOCATED_KIND = "Pipeline"


def colocated_plan(config: AppConfig, tasks_of: Callable[[str], frozenset[Task]]) -> StagePlan:
    """One ``Pipeline`` deployment per model, which every stage of that model's requests goes to."""
    names = config.model_names()
    deployments = tuple(StageDeployment(kind=COLOCATED_KIND, name=COLOCATED_KIND if len(names) == 1
                                        else f"{COLOCATED_KIND}-{_safe(model)}", model=model, serves=(model,))
                        for model in names)
    routes = {deployment.model: {kind: deployment.name for kind in stage_kinds(tasks_of(deployment.model))}
              for deployment in deployments}
    return StagePlan(deployments, routes)


def app_stage_plan(config: AppConfig) -> StagePlan:
    """The plan for ``config``, reading each model's tasks and weights where they are on this machine."""
    from engine.models.model_registry import ModelNotFoundError, model_tasks
    from serve.layout import resolved_layout

    specs: dict[str, ModelSpec | None] = {}

    def tasks_of(model: str) -> frozenset[Task]:
        return model_tasks(config.model_entry(model).source)

    if resolved_layout(config)[0] == "colocated":
        return colocated_plan(config, tasks_of)

    def identity_of(model: str, kind: str) -> Hashable | None:
        if len(config.models) == 1:  # nothing to share with: no need to read (or build) the model
            return None
        if not _on_this_machine(config.model_entry(model).source):  # never a download, nor a wait on the hub
            return None
        if model not in specs:
            try:
                specs[model] = served_spec(config, model)
            except ModelNotFoundError:
                specs[model] = None
        return None if specs[model] is None else stage_identity(specs[model], kind)

    return plan_stages(config, tasks_of, identity_of)


def _on_this_machine(source: str) -> bool:
    """A built-in or shipped preset, a directory, or a hub preset already in the local cache."""
    from pathlib import Path

    from engine.models.builtin_presets import BUILTIN_PRESETS
    from engine.models.model_registry import HUB_PRESETS
    from engine.models.shipped_presets import SHIPPED_PRESETS

    if source in BUILTIN_PRESETS or source in SHIPPED_PRESETS or Path(source).expanduser().is_dir():
        return True
    repo = HUB_PRESETS[source].repo_id if source in HUB_PRESETS else source
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo, allow_patterns=["model_index.json"], local_files_only=True)
    except Exception:
        return False
    return True


def _local_root(spec: ModelSpec, components: tuple[str, ...]) -> str | None:
    """The directory holding ``components``: the model's own, or its snapshot in the local hub cache.

    Never downloads: the builder must not fetch a 10 GB encoder just to compare it.
    """
    from pathlib import Path

    if Path(spec.source).is_dir():
        return spec.source
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(spec.source, allow_patterns=[f"{component}/*" for component in components],
                                 local_files_only=True)
    except Exception:  # not cached: nothing to compare
        return None


def _safe(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", model)
