"""Writing frames out: H.264 MP4 through ffmpeg, lossless frames as .npy. Both atomic."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from engine.frame_array import checked_frames
from engine.stage_types import Frames


def write_mp4(frames: Frames, path: str | Path, crf: int = 18) -> Path:
    """Encode H.264 (yuv420p, the profile every player decodes) at the frames' fps."""
    import imageio_ffmpeg

    path = Path(path)
    array = checked_frames(frames.frames)
    num_frames, height, width, _ = array.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sides (got {width}x{height})")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        writer = imageio_ffmpeg.write_frames(
            str(temporary),
            size=(width, height),
            fps=frames.fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=None,
            macro_block_size=1,
            output_params=["-crf", str(crf), "-movflags", "+faststart", "-f", "mp4"],
        )
        writer.send(None)
        for frame in array:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_npy(frames: Frames, path: str | Path) -> Path:
    """The exact uint8 frames [F, H, W, 3], for lossless comparison and post-processing."""
    path = Path(path)
    array = checked_frames(frames.frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_sibling(path)
    try:
        with open(temporary, "wb") as handle:
            np.save(handle, array)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _temporary_sibling(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".partial", dir=path.parent)
    os.close(handle)
    return Path(name)
