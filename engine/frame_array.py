"""The one frame-array shape every writer and post-processing step takes and returns."""

from __future__ import annotations

import numpy as np


def checked_frames(frames: np.ndarray, field: str = "frames") -> np.ndarray:
    """Return ``frames`` if it is a non-empty uint8 [F, H, W, 3] array, else raise naming ``field``."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{field}: must be a numpy array (got {type(frames).__name__})")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{field}: must be uint8 [F, H, W, 3] (got {frames.dtype} {list(frames.shape)})")
    if 0 in frames.shape[:3]:
        raise ValueError(f"{field}: must hold at least one frame of at least 1x1 pixels (got {list(frames.shape)})")
    return frames
