"""Flicker: how much a video changes from frame to frame beyond what its motion explains.

For each pair of consecutive frames, dense optical flow (OpenCV's Farneback, on grayscale)
says where each pixel of the first frame went; warping the second frame back along it
predicts the first, and whatever the warp cannot explain (brightness jumps, boiling
texture, noise, objects popping in and out) is left as error.

Unit: mean absolute error per pixel and colour channel, in 8-bit levels (0-255), averaged
over consecutive pairs. 0 is a perfectly consistent video; a toy-world clip of flat shapes
moving smoothly scores below 1 (flow is not exact at edges), and independent per-frame noise
of standard deviation s adds roughly s.
"""

from __future__ import annotations

import cv2
import numpy as np

# The score is for dashboards and alerts, so it must cost little next to decoding the video:
# frames are shrunk so the long side is at most this many pixels before flow. Brightness jumps
# and blotchy flicker survive that; fine per-pixel noise is partly averaged away, so compare
# scores between videos of similar size. A 1280x720x81 clip then takes under a second on two
# CPU cores, most of it in the 80 flows at 256x144.
MAX_SIDE = 256
# OpenCV's suggested Farneback settings: a 3-level pyramid halving each time, 15 px windows.
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


def flicker_score(frames: np.ndarray) -> float:
    """Mean motion-compensated frame-to-frame error of uint8 [F, H, W, 3] ``frames``, in 0-255
    levels (see the module docstring); 0.0 for fewer than 2 frames."""
    _check_frames(frames)
    if len(frames) < 2:
        return 0.0
    frames = _downscaled(frames)
    height, width = frames.shape[1:3]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    grays = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    errors = []
    for index in range(len(frames) - 1):
        # flow[y, x] is where pixel (x, y) of the earlier frame is in the later one, so sampling
        # the later frame there lines it up with the earlier frame.
        flow = cv2.calcOpticalFlowFarneback(grays[index], grays[index + 1], None, **_FARNEBACK)
        warped = cv2.remap(
            frames[index + 1],
            grid_x + flow[..., 0],
            grid_y + flow[..., 1],
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        errors.append(float(np.abs(warped.astype(np.float32) - frames[index].astype(np.float32)).mean()))
    return float(np.mean(errors))


def _check_frames(frames: np.ndarray) -> None:
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"frames: must be a numpy array (got {type(frames).__name__})")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames: must have shape [F, H, W, 3] (got {list(frames.shape)})")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames: must be uint8, 0-255 (got {frames.dtype})")
    if len(frames) and 0 in frames.shape[1:3]:
        raise ValueError(f"frames: must be at least 1x1 pixels (got {list(frames.shape)})")


def _downscaled(frames: np.ndarray) -> np.ndarray:
    height, width = frames.shape[1:3]
    scale = MAX_SIDE / max(height, width)
    if scale >= 1:
        return frames
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # INTER_AREA averages the pixels each output pixel covers: no aliasing shimmer of its own.
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames])
