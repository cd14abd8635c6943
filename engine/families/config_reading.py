"""Reading a component's config the way diffusers reads it: the file's values over the class's defaults."""

from __future__ import annotations

import inspect
import math
from typing import Any


def config_value(component_class: type, config: dict, name: str) -> Any:
    """``config[name]``, or the default ``component_class.__init__`` gives it when the file leaves it out."""
    if name in config:
        return config[name]
    parameter = inspect.signature(component_class.__init__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise KeyError(f"{component_class.__name__} config has no {name!r} and the class no default for it")
    return parameter.default


def size_rule(pipeline_multiple: int, pipeline_name: str, compression: int, patch: tuple[int, int]) -> tuple[int, str]:
    """The multiple sizes must be, and why: the pipeline's own check and the latent patch grid."""
    patch_h, patch_w = patch
    grid = compression * math.lcm(patch_h, patch_w)
    multiple = math.lcm(pipeline_multiple, grid)
    reasons = [f"the VAE's {compression}x downsampling times the transformer's {patch_h}x{patch_w} patch is {grid}"]
    if multiple != grid:
        reasons.append(f"{pipeline_name} takes multiples of {pipeline_multiple}")
    return multiple, "; ".join(reasons)


def shift_key(scheduler_config: dict) -> str | None:
    """The scheduler's static flow-shift setting: ``flow_shift`` (UniPC, DPM-Solver) or ``shift`` (flow-match Euler).

    None when the shift is dynamic (derived per request from the video's token count), or absent.
    """
    if scheduler_config.get("use_dynamic_shifting"):
        return None
    if "flow_shift" in scheduler_config:
        return "flow_shift"
    if "shift" in scheduler_config:
        return "shift"
    return None
