"""Image-to-video conditioning stage: first frame -> what the model's family conditions its DiT on."""

from __future__ import annotations

import io



def decode_image(data: bytes):
    """Bytes -> RGB PIL image, upright per its EXIF orientation (as diffusers' load_image)."""
    from diffusers.utils import load_image
    from PIL import Image

    return load_image(Image.open(io.BytesIO(data)))
