"""Resolve a model name or path to a ModelSpec.

Three kinds of source, all loaded later through diffusers/transformers ``from_pretrained``:
- built-in offline presets (``tiny``, ``tiny-i2v``, ``bench``), generated on first use;
- named Wan 2.1 presets, which are Diffusers-format Hugging Face repos (the hub client
  honours ``HF_HUB_OFFLINE`` and the local cache);
- any local diffusers-format Wan directory.

Defaults come from the model itself wherever it declares them: the scheduler's
``flow_shift`` always comes from its ``scheduler_config.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from engine.builtin_presets import BUILTIN_PRESETS, PRESET_METADATA_FILE, WAN_DEFAULT_NEGATIVE_PROMPT, builtin_preset_dir
from engine.model_spec import GenerationDefaults, GenerationLimits, LatentGeometry, ModelSpec, Task


class ModelNotFoundError(ValueError):
    """The model name is unknown, or its files are neither local nor downloadable."""


@dataclass(frozen=True)
class HubPreset:
    repo_id: str
    task: Task
    defaults: GenerationDefaults
    limits: GenerationLimits


def _wan_defaults(width: int, height: int, flow_shift: float) -> GenerationDefaults:
    # The settings Wan 2.1's model cards and diffusers' examples use.
    return GenerationDefaults(
        width=width,
        height=height,
        num_frames=81,
        num_inference_steps=50,
        guidance_scale=5.0,
        fps=16,
        flow_shift=flow_shift,
        negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT,
    )


_WAN_LIMITS = GenerationLimits(min_size=128, max_size=1280, min_frames=1, max_frames=129)

HUB_PRESETS: dict[str, HubPreset] = {
    "wan2.1-t2v-1.3b": HubPreset(
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", Task.TEXT_TO_VIDEO, _wan_defaults(832, 480, 3.0), _WAN_LIMITS
    ),
    "wan2.1-t2v-14b": HubPreset(
        "Wan-AI/Wan2.1-T2V-14B-Diffusers", Task.TEXT_TO_VIDEO, _wan_defaults(1280, 720, 5.0), _WAN_LIMITS
    ),
    "wan2.1-i2v-14b-480p": HubPreset(
        "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", Task.IMAGE_TO_VIDEO, _wan_defaults(832, 480, 3.0), _WAN_LIMITS
    ),
    "wan2.1-i2v-14b-720p": HubPreset(
        "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", Task.IMAGE_TO_VIDEO, _wan_defaults(1280, 720, 5.0), _WAN_LIMITS
    ),
}

_PIPELINE_TASKS = {"WanPipeline": Task.TEXT_TO_VIDEO, "WanImageToVideoPipeline": Task.IMAGE_TO_VIDEO}


def preset_names() -> list[str]:
    return [*BUILTIN_PRESETS, *HUB_PRESETS]


def model_task(name_or_path: str) -> Task:
    """The model's task, without building or downloading anything."""
    if name_or_path in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[name_or_path].architecture.task
    if name_or_path in HUB_PRESETS:
        return HUB_PRESETS[name_or_path].task
    try:
        class_name = json.loads((Path(name_or_path).expanduser() / "model_index.json").read_text()).get("_class_name")
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"model {name_or_path!r} is neither a preset nor a diffusers directory: {error}") from None
    if class_name not in _PIPELINE_TASKS:
        raise ModelNotFoundError(f"{name_or_path} holds a {class_name!r}; expected one of {sorted(_PIPELINE_TASKS)}")
    return _PIPELINE_TASKS[class_name]


def resolve_model(name_or_path: str, cache_dir: Path) -> ModelSpec:
    """Turn a preset name or a directory into a ModelSpec, building built-ins if needed."""
    if name_or_path in BUILTIN_PRESETS:
        return _spec_from_directory(builtin_preset_dir(name_or_path, cache_dir), name_or_path)
    if name_or_path in HUB_PRESETS:
        return _spec_from_hub_preset(name_or_path, HUB_PRESETS[name_or_path])
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return _spec_from_directory(path.resolve(), path.name)
    raise ModelNotFoundError(
        f"model {name_or_path!r} is neither a preset ({', '.join(preset_names())}) "
        "nor a diffusers-format Wan directory"
    )


def _spec_from_hub_preset(name: str, preset: HubPreset) -> ModelSpec:
    try:
        configs = _read_component_configs(preset.repo_id)
    except OSError as error:  # huggingface_hub raises OSError subclasses when offline or missing
        raise ModelNotFoundError(
            f"model {name!r} ({preset.repo_id}) is not in the local Hugging Face cache and could not be "
            f"downloaded: {error}"
        ) from error
    defaults = replace(preset.defaults, flow_shift=float(configs["scheduler"].get("flow_shift", 1.0)))
    return ModelSpec(
        name=name,
        source=preset.repo_id,
        task=preset.task,
        defaults=defaults,
        limits=preset.limits,
        geometry=_geometry(configs),
    )


def _spec_from_directory(directory: Path, fallback_name: str) -> ModelSpec:
    try:
        configs = _read_component_configs(str(directory))
        model_index = json.loads((directory / "model_index.json").read_text())
    except OSError as error:
        raise ModelNotFoundError(f"{directory} is not a diffusers-format Wan directory: {error}") from error
    task = _PIPELINE_TASKS.get(model_index.get("_class_name"))
    if task is None:
        raise ModelNotFoundError(
            f"{directory} holds a {model_index.get('_class_name')!r}; expected one of {sorted(_PIPELINE_TASKS)}"
        )
    flow_shift = float(configs["scheduler"].get("flow_shift", 1.0))
    metadata_path = directory / PRESET_METADATA_FILE
    if metadata_path.is_file():
        metadata = json.loads(metadata_path.read_text())
        name = metadata["name"]
        defaults = GenerationDefaults(**{**metadata["defaults"], "flow_shift": flow_shift})
        limits = GenerationLimits(**metadata["limits"])
    else:
        # A plain Wan checkpoint: Wan's published settings, at 720p when its scheduler is
        # configured for 720p (flow_shift 5), else 480p.
        name = fallback_name
        width, height = (1280, 720) if flow_shift >= 5.0 else (832, 480)
        defaults = _wan_defaults(width, height, flow_shift)
        limits = _WAN_LIMITS
    return ModelSpec(
        name=name, source=str(directory), task=task, defaults=defaults, limits=limits, geometry=_geometry(configs)
    )


def _read_component_configs(source: str) -> dict[str, dict]:
    """Read only the small config files (through the hub client for repo ids)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    return {
        "vae": AutoencoderKLWan.load_config(source, subfolder="vae"),
        "transformer": WanTransformer3DModel.load_config(source, subfolder="transformer"),
        "scheduler": UniPCMultistepScheduler.load_config(source, subfolder="scheduler"),
    }


def _geometry(configs: dict[str, dict]) -> LatentGeometry:
    vae = configs["vae"]
    temporal_downsample = vae.get("temperal_downsample", [False, True, True])
    return LatentGeometry(
        latent_channels=int(vae.get("z_dim", 16)),
        temporal_factor=int(vae.get("scale_factor_temporal") or 2 ** sum(temporal_downsample)),
        spatial_factor=int(vae.get("scale_factor_spatial") or 2 ** len(temporal_downsample)),
        patch_size=tuple(configs["transformer"].get("patch_size", (1, 2, 2))),
    )


def local_model_directory(spec: ModelSpec, *components: str) -> str:
    """A local directory holding ``components`` of the model, fetched into the HF cache if needed.

    Loading from a local snapshot is what diffusers' own ``from_pretrained`` does, and
    fetching only the named components means a text-encoder process never downloads the
    14B DiT weights. With ``HF_HUB_OFFLINE=1`` this only looks in the cache.
    """
    if Path(spec.source).is_dir():
        return spec.source
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            spec.source, allow_patterns=["model_index.json", *(f"{component}/*" for component in components)]
        )
    except OSError as error:
        raise ModelNotFoundError(f"{spec.source} ({', '.join(components)}) is not available locally: {error}") from error
