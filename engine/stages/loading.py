"""Loading a model's stages: each one from the family that runs the checkpoint.

Apart from the generic stage classes (engine/stages/denoiser.py and the others) because
the families build on those: the stages never import a family, the families import the
stages, and this module, above both, picks the family.
"""

from __future__ import annotations

from engine.families import family_of
from engine.models.model_spec import ModelSpec
from engine.stage_placement import StagePlacement


def load_denoiser(spec: ModelSpec, placement: StagePlacement | None = None, compile_transformer: bool = False):
    """The model family's Denoiser (every expert of a two-expert model in it)."""
    return family_of(spec).denoiser(spec, placement or StagePlacement(), compile_transformer)


def load_image_conditioner(spec: ModelSpec, placement: StagePlacement | None = None):
    if not spec.is_image_to_video:
        raise ValueError(f"{spec.name} is a text-to-video model; it has no image conditioning")
    return family_of(spec).image_conditioner(spec, placement or StagePlacement())


def image_embed_tokens(spec: ModelSpec) -> int | None:
    """Image-embed tokens per image the DiT sees (CLIP's, for Wan 2.1 I2V), from configs; None without any."""
    return family_of(spec).image_embed_tokens(spec)


def load_vae_decoder(spec: ModelSpec, placement: StagePlacement | None = None, compile_decoder: bool = False):
    return family_of(spec).vae_decoder(spec, placement or StagePlacement(), compile_decoder)
