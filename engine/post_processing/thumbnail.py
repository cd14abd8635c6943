"""Still pictures for listings: the video's middle frame shrunk to fit a box, and a sprite
sheet of evenly spaced frames (OpenAI's ``spritesheet`` content variant) for scrubbing previews."""

from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.frame_array import checked_frames

THUMBNAIL_FORMATS = ("JPEG", "PNG")
JPEG_QUALITY = 90
# A sheet of at most 10 tiles, 5 to a row, each at most 160 px wide.
SPRITESHEET_TILES = 10
SPRITESHEET_COLUMNS = 5
SPRITESHEET_TILE_WIDTH = 160


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
    return _write_atomically(make_thumbnail(frames, max_side=max_side, image_format=image_format), path)


class SpritesheetLayout(NamedTuple):
    frame_indices: tuple[int, ...]  # the frames shown, in tile order
    columns: int
    rows: int
    tile_size: tuple[int, int]  # (width, height)

    @property
    def size(self) -> tuple[int, int]:
        return self.columns * self.tile_size[0], self.rows * self.tile_size[1]


def spritesheet_layout(num_frames: int, height: int, width: int, *, max_tiles: int = SPRITESHEET_TILES,
                       columns: int = SPRITESHEET_COLUMNS,
                       tile_width: int = SPRITESHEET_TILE_WIDTH) -> SpritesheetLayout:
    """Which frames a sheet of a [num_frames, height, width] clip shows, and how it lays them out."""
    count = min(num_frames, max_tiles)
    # Evenly spaced over the whole clip (integer steps: the last tile is the last frame); one tile: the first.
    indices = tuple(i * (num_frames - 1) // (count - 1) if count > 1 else 0 for i in range(count))
    used_columns = min(columns, count)
    tile = (width, height) if width <= tile_width else (tile_width, max(1, round(height * tile_width / width)))
    return SpritesheetLayout(indices, used_columns, math.ceil(count / used_columns), tile)


def make_spritesheet(
    frames: np.ndarray,
    max_tiles: int = SPRITESHEET_TILES,
    columns: int = SPRITESHEET_COLUMNS,
    tile_width: int = SPRITESHEET_TILE_WIDTH,
) -> bytes:
    """A JPEG grid of ``min(F, max_tiles)`` evenly spaced frames, first and last included,
    left to right then top to bottom, at most ``columns`` to a row.

    Each tile is a frame downscaled (never upscaled) to at most ``tile_width`` wide, aspect
    kept; a short last row leaves its cells black.
    """
    from PIL import Image

    frames = checked_frames(frames)
    for name, value in (("max_tiles", max_tiles), ("columns", columns), ("tile_width", tile_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be a positive integer (got {value!r})")
    layout = spritesheet_layout(*frames.shape[:3], max_tiles=max_tiles, columns=columns, tile_width=tile_width)
    sheet = Image.new("RGB", layout.size)
    for position, index in enumerate(layout.frame_indices):
        tile = Image.fromarray(frames[index])
        if tile.size != layout.tile_size:
            tile = tile.resize(layout.tile_size, Image.Resampling.LANCZOS)
        row, column = divmod(position, layout.columns)
        sheet.paste(tile, (column * layout.tile_size[0], row * layout.tile_size[1]))
    buffer = io.BytesIO()
    sheet.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_spritesheet(frames: np.ndarray, path: str | Path, **layout: int) -> Path:
    """Write ``make_spritesheet``'s bytes to ``path`` atomically."""
    return _write_atomically(make_spritesheet(frames, **layout), path)


def _write_atomically(encoded: bytes, path: str | Path) -> Path:
    # A temporary sibling, then a rename: a reader never sees half a file.
    path = Path(path)
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
