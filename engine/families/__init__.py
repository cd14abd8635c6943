"""Model families: which code runs a checkpoint, found from its model_index.json pipeline class.

Adding a family is a package beside ``wan`` and ``ltx`` implementing
engine/families/family.py, and one entry in FAMILIES; nothing in serve/ changes.
"""

from __future__ import annotations

from engine.families.family import ModelFamily
from engine.families.ltx import LTX_FAMILY
from engine.families.wan import WAN_FAMILY
from engine.models.model_spec import ModelSpec

FAMILIES: dict[str, ModelFamily] = {family.name: family for family in (WAN_FAMILY, LTX_FAMILY)}


class UnsupportedPipelineError(ValueError):
    """A checkpoint names a diffusers pipeline class no family runs."""


def supported_pipeline_classes() -> list[str]:
    return sorted(name for family in FAMILIES.values() for name in family.pipelines)


def family_for_pipeline(class_name: str | None, where: str) -> ModelFamily:
    for family in FAMILIES.values():
        if class_name in family.pipelines:
            return family
    raise UnsupportedPipelineError(
        f"{where} holds a {class_name!r} pipeline; supported pipeline classes: {', '.join(supported_pipeline_classes())}"
    )


def family_of(spec: ModelSpec) -> ModelFamily:
    return FAMILIES[spec.family]
