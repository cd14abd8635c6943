"""Resolve a model name or path to a ModelSpec.

Three kinds of source, all loaded later through diffusers/transformers ``from_pretrained``:
- built-in offline presets (``tiny``, ``tiny-wan22-moe``, ``tiny-ltx``, ...), generated on first use;
- named presets of the published checkpoints, which are Diffusers-format Hugging Face
  repos (the hub client honours ``HF_HUB_OFFLINE`` and the local cache);
- any local diffusers-format directory whose model_index.json names a pipeline class a
  family in engine/families runs.

Geometry, limits and tasks always come from the checkpoint's own configs, through its
family. A preset only chooses defaults (its published size, steps, guidance and frame
rate); the scheduler's flow shift always comes from its ``scheduler_config.json``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path

from engine.models.builtin_presets import BUILTIN_PRESETS, PRESET_METADATA_FILE, builtin_preset_dir
from engine.families import UnsupportedPipelineError, family_for_pipeline
from engine.models.model_source import ModelNotFoundError
from engine.families.ltx.traits import LTX_DEFAULT_NEGATIVE_PROMPT
from engine.families.wan.traits import WAN_DEFAULT_NEGATIVE_PROMPT
from engine.models.model_spec import GenerationDefaults, GenerationLimits, ModelSpec, Task
from engine.models.shipped_presets import SHIPPED_PRESETS


@dataclass(frozen=True)
class HubPreset:
    repo_id: str
    pipeline_class: str  # what its model_index.json names; the family that runs it follows
    tasks: frozenset[Task]
    defaults: GenerationDefaults  # the model card's settings (flow_shift is read from the repo)


_T2V, _I2V = frozenset({Task.TEXT_TO_VIDEO}), frozenset({Task.IMAGE_TO_VIDEO})
_BOTH = _T2V | _I2V


def _wan(width: int, height: int, frames: int = 81, steps: int = 50, guidance: float = 5.0,
         guidance_2: float | None = None, fps: int = 16) -> GenerationDefaults:
    return GenerationDefaults(width=width, height=height, num_frames=frames, num_inference_steps=steps,
                              guidance_scale=guidance, guidance_scale_2=guidance_2, fps=fps, flow_shift=None,
                              negative_prompt=WAN_DEFAULT_NEGATIVE_PROMPT)


def _ltx(width: int, height: int, steps: int, fps: int, decode_timestep: float = 0.0,
         decode_noise_scale: float | None = None) -> GenerationDefaults:
    return GenerationDefaults(width=width, height=height, num_frames=161, num_inference_steps=steps,
                              guidance_scale=3.0, fps=fps, flow_shift=None, negative_prompt=LTX_DEFAULT_NEGATIVE_PROMPT,
                              decode_timestep=decode_timestep, decode_noise_scale=decode_noise_scale)


# The settings of each checkpoint's model card and diffusers' examples.
HUB_PRESETS: dict[str, HubPreset] = {
    "wan2.1-t2v-1.3b": HubPreset("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "WanPipeline", _T2V, _wan(832, 480)),
    "wan2.1-t2v-14b": HubPreset("Wan-AI/Wan2.1-T2V-14B-Diffusers", "WanPipeline", _T2V, _wan(1280, 720)),
    "wan2.1-i2v-14b-480p": HubPreset("Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", "WanImageToVideoPipeline", _I2V,
                                     _wan(832, 480)),
    "wan2.1-i2v-14b-720p": HubPreset("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", "WanImageToVideoPipeline", _I2V,
                                     _wan(1280, 720)),
    "wan2.2-t2v-a14b": HubPreset("Wan-AI/Wan2.2-T2V-A14B-Diffusers", "WanPipeline", _T2V,
                                 _wan(1280, 720, steps=40, guidance=4.0, guidance_2=3.0)),
    "wan2.2-i2v-a14b": HubPreset("Wan-AI/Wan2.2-I2V-A14B-Diffusers", "WanImageToVideoPipeline", _I2V,
                                 _wan(1280, 720, steps=40, guidance=3.5, guidance_2=3.5)),
    "wan2.2-ti2v-5b": HubPreset("Wan-AI/Wan2.2-TI2V-5B-Diffusers", "WanPipeline", _BOTH,
                                _wan(1280, 704, frames=121, steps=50, guidance=5.0, fps=24)),
    "ltx-video": HubPreset("Lightricks/LTX-Video", "LTXPipeline", _BOTH, _ltx(704, 480, steps=50, fps=25)),
    # 0.9.5's VAE is timestep-conditioned: decode at t=0.05 with 2.5 % noise, as its model card does.
    "ltx-video-0.9.5": HubPreset("Lightricks/LTX-Video-0.9.5", "LTXPipeline", _BOTH,
                                 _ltx(768, 512, steps=40, fps=24, decode_timestep=0.05, decode_noise_scale=0.025)),
}


def preset_names() -> list[str]:
    return [*SHIPPED_PRESETS, *BUILTIN_PRESETS, *HUB_PRESETS]


def model_tasks(name_or_path: str) -> frozenset[Task]:
    """The tasks a model runs, without building or downloading weights (configs only)."""
    if name_or_path in BUILTIN_PRESETS:
        return BUILTIN_PRESETS[name_or_path].tasks
    if name_or_path in SHIPPED_PRESETS:
        name_or_path = str(SHIPPED_PRESETS[name_or_path])
    elif name_or_path in HUB_PRESETS:
        return HUB_PRESETS[name_or_path].tasks
    model_index = _read_model_index(Path(name_or_path).expanduser())
    return _family(model_index, name_or_path).tasks_of(model_index)


def resolve_model(name_or_path: str, cache_dir: Path) -> ModelSpec:
    """Turn a preset name or a directory into a ModelSpec, building built-ins if needed."""
    if name_or_path in BUILTIN_PRESETS:
        directory = builtin_preset_dir(name_or_path, cache_dir)
        return _spec(name_or_path, str(directory), _read_model_index(directory), BUILTIN_PRESETS[name_or_path].defaults)
    if name_or_path in HUB_PRESETS:
        return _spec_from_hub_preset(name_or_path, HUB_PRESETS[name_or_path])
    # A shipped model is a directory in the package, with its name and defaults in videoserve.json.
    path = SHIPPED_PRESETS.get(name_or_path) or Path(name_or_path).expanduser()
    if path.is_dir():
        directory = path.resolve()
        metadata = directory / PRESET_METADATA_FILE
        name, defaults, grammar = path.name, None, None
        if metadata.is_file():  # a copy of a built-in preset keeps its name and defaults
            recorded = json.loads(metadata.read_text())
            name, defaults = recorded["name"], GenerationDefaults(**recorded["defaults"])
            grammar = recorded.get("prompt_grammar")
        return replace(_spec(name, str(directory), _read_model_index(directory), defaults), prompt_grammar=grammar)
    raise ModelNotFoundError(
        f"model {name_or_path!r} is neither a preset ({', '.join(preset_names())}) nor a diffusers-format directory"
    )


def _spec_from_hub_preset(name: str, preset: HubPreset) -> ModelSpec:
    from diffusers import DiffusionPipeline

    try:
        model_index = dict(DiffusionPipeline.load_config(preset.repo_id))
        spec = _spec(name, preset.repo_id, {**model_index, "_class_name": preset.pipeline_class}, preset.defaults)
    except OSError as error:  # huggingface_hub raises OSError subclasses when offline or missing
        raise ModelNotFoundError(
            f"model {name!r} ({preset.repo_id}) is not in the local Hugging Face cache and could not be "
            f"downloaded: {error}"
        ) from error
    return spec


def _spec(name: str, source: str, model_index: dict, defaults: GenerationDefaults | None) -> ModelSpec:
    family = _family(model_index, source)
    try:
        traits = family.read_traits(source, model_index)
    except ValueError as error:
        raise ModelNotFoundError(f"{source}: {error}") from error
    if defaults is None:
        defaults = traits.defaults
    else:
        # The checkpoint's scheduler says what its shift is; a preset never overrides it.
        defaults = replace(defaults, flow_shift=traits.defaults.flow_shift)
    if traits.boundary_ratio is None and defaults.guidance_scale_2 is not None:
        defaults = replace(defaults, guidance_scale_2=None)
    return ModelSpec(
        name=name,
        source=source,
        family=family.name,
        pipeline_class=model_index["_class_name"],
        tasks=traits.tasks,
        defaults=fit_defaults(defaults, traits.limits, traits.geometry.temporal_factor),
        limits=traits.limits,
        geometry=traits.geometry,
        boundary_ratio=traits.boundary_ratio,
        stage_components=tuple(sorted(traits.stage_components.items())),
    )


def fit_defaults(defaults: GenerationDefaults, limits: GenerationLimits, frame_step: int) -> GenerationDefaults:
    """Published defaults moved inside what this checkpoint's architecture runs (never a request's values)."""

    def size(value: int) -> int:
        if limits.max_size is not None:
            value = min(value, limits.max_size)
        return max(limits.size_multiple, value - value % limits.size_multiple)

    frames = defaults.num_frames
    if limits.max_frames is not None:
        frames = min(frames, limits.max_frames)
    frames -= (frames - 1) % frame_step
    return dataclasses.replace(defaults, width=size(defaults.width), height=size(defaults.height), num_frames=frames)


def _read_model_index(directory: Path) -> dict:
    try:
        return json.loads((Path(directory) / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(f"{directory} is not a diffusers-format model directory: {error}") from None


def _family(model_index: dict, source: str):
    try:
        return family_for_pipeline(model_index.get("_class_name"), source)
    except UnsupportedPipelineError as error:
        raise ModelNotFoundError(str(error)) from None
