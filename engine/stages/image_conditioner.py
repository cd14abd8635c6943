"""Image-to-video conditioning stage: first frame -> what the model's family conditions its DiT on."""

from __future__ import annotations

import io

from engine.model_spec import ModelSpec
from engine.stage_placement import StagePlacement


def decode_image(data: bytes):
    """Bytes -> RGB PIL image, upright per its EXIF orientation (as diffusers' load_image)."""
    from diffusers.utils import load_image
    from PIL import Image

    return load_image(Image.open(io.BytesIO(data)))


def load_image_conditioner(spec: ModelSpec, placement: StagePlacement | None = None):
    from engine.families import family_of

    if not spec.is_image_to_video:
        raise ValueError(f"{spec.name} is a text-to-video model; it has no image conditioning")
    return family_of(spec).image_conditioner(spec, placement or StagePlacement())


def image_embed_tokens(spec: ModelSpec) -> int | None:
    """Image-embed tokens per image the DiT sees (CLIP's, for Wan 2.1 I2V), from configs; None without any."""
    from engine.families import family_of

    return family_of(spec).image_embed_tokens(spec)
