"""Pictures for image-to-video requests."""

from __future__ import annotations

import io

import numpy as np


def image_bytes(width: int, height: int, image_format: str = "PNG", seed: int = 0) -> bytes:
    """A random RGB picture encoded in ``image_format``."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, image_format)
    return buffer.getvalue()
