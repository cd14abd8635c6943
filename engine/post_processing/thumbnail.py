"""A still picture for listings: the video's middle frame, shrunk to fit a box."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from engine.frame_array import checked_frames

THUMBNAIL_FORMATS = ("JPEG", "PNG")
JPEG_QUALITY = 90


def make_thumbnail(frames: np.ndarray, max_side: int = 512, image_format: str = "JPEG") -> bytes:
    """Encode the middle frame, downscaled (never upscaled) so its longer side is at most ``max_side``.

    The middle frame rather than the first: image-to-video clips start on the user's own
    picture, and text-to-video clips often need a few frames to settle.
    """
    from PIL import Image

    frames = checked_frames(frames)
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise ValueError(f"max_side: must be a positive integer (got {max_side!r})")
    if image_format not in THUMBNAIL_FORMATS:
        raise ValueError(f"image_format: must be one of {', '.join(THUMBNAIL_FORMATS)} (got {image_format!r})")

    image = Image.fromarray(frames[len(frames) // 2])
    size = thumbnail_size(image.width, image.height, max_side)
    if size != (image.width, image.height):
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buffer, "PNG")
    return buffer.getvalue()


def thumbnail_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled to fit a max_side square, aspect ratio kept, each side at least 1."""
    longer = max(width, height)
    if longer <= max_side:
        return width, height
    return max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer))


def write_thumbnail(
    frames: np.ndarray, path: str | Path, max_side: int = 512, image_format: str = "JPEG"
) -> Path:
    """Write ``make_thumbnail``'s bytes to ``path`` atomically (temporary sibling, then rename)."""
    path = Path(path)
    encoded = make_thumbnail(frames, max_side=max_side, image_format=image_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".partial", dir=path.parent)
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(encoded)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
