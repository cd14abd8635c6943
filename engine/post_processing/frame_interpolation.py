"""Frame-rate up-conversion with ffmpeg's motion-compensated ``minterpolate`` filter.

Frames travel as raw rgb24 through ffmpeg's stdin and stdout; no video file is written.

What ffmpeg's minterpolate does at the clip's end (imageio-ffmpeg's ffmpeg 9.0, measured
for 1-81 frames and 8->24, 16->24/30/60/17, 24->120 fps): it only emits output frames up to
the timestamp of the second-to-last input frame, i.e. ``floor((F - 2) * T / S) + 1`` frames
for F >= 3 input frames, and no frame at all for one or two. Fed as-is, 8 frames at 8 fps
would come back as 19 frames at 24 fps instead of 24, and a two-frame clip as nothing.

So the last frame is repeated a few times before ffmpeg sees it, and the output is cut to
the output timestamps inside the source clip's duration: exactly ``ceil(F * T / S)``
frames (8 @ 8 fps -> 24 @ 24 fps; 81 @ 16 fps -> 304 @ 60 fps), the last of them holding
the final source frame just as the source does. The clip keeps its duration.

minterpolate does not take RGB: frames are converted to yuv444p (no chroma subsampling, so
any width and height works) and back, which moves pixel values by at most 2 levels.
"""

from __future__ import annotations

import math
import subprocess

import numpy as np

from engine.frame_array import checked_frames

MAX_INTERPOLATE_FPS = 120

# minterpolate lags its input by two frames (see the module docstring); one more is margin.
_TAIL_REPEATS = 3


def interpolate_with_ffmpeg(frames: np.ndarray, source_fps: int, target_fps: int) -> np.ndarray:
    """Raise ``frames`` (uint8 [F, H, W, 3] at ``source_fps``) to ``target_fps``.

    Returns uint8 [ceil(F * target_fps / source_fps), H, W, 3]; the first frame is the
    first source frame (to within the yuv444p round trip).
    """
    import imageio_ffmpeg

    frames = checked_frames(frames)
    if isinstance(source_fps, bool) or not isinstance(source_fps, int) or source_fps < 1:
        raise ValueError(f"fps: the source frame rate must be a positive integer (got {source_fps!r})")
    check_interpolate_fps(target_fps, source_fps)

    num_frames, height, width, _ = frames.shape
    expected = interpolated_frame_count(num_frames, source_fps, target_fps)
    padded = np.concatenate([frames, np.repeat(frames[-1:], _TAIL_REPEATS, axis=0)])
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner",
        "-loglevel", "error",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}",
        "-r", str(source_fps),
        "-i", "pipe:0",
        "-vf", f"format=yuv444p,minterpolate=fps={target_fps}:mi_mode=mci:mc_mode=aobmc:me_mode=bidir",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "pipe:1",
    ]  # fmt: skip
    completed = subprocess.run(command, input=memoryview(padded.reshape(-1)), capture_output=True, check=False)
    if completed.returncode != 0:
        message = completed.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"ffmpeg minterpolate failed (exit code {completed.returncode}): {message}")

    frame_bytes = height * width * 3
    produced = len(completed.stdout) // frame_bytes
    if len(completed.stdout) % frame_bytes or produced < expected:
        raise RuntimeError(
            f"ffmpeg minterpolate returned {len(completed.stdout)} bytes: expected at least {expected} "
            f"whole {width}x{height} rgb24 frames for {num_frames} frames at {source_fps} -> {target_fps} fps"
        )
    output = np.frombuffer(completed.stdout, dtype=np.uint8, count=expected * frame_bytes)
    return output.reshape(expected, height, width, 3).copy()


def interpolated_frame_count(num_frames: int, source_fps: int, target_fps: int) -> int:
    """Frames of a ``num_frames`` clip raised from ``source_fps`` to ``target_fps``: its duration kept."""
    return math.ceil(num_frames * target_fps / source_fps)


def check_interpolate_fps(target_fps: int, source_fps: int) -> None:
    """Interpolation only raises the frame rate, up to MAX_INTERPOLATE_FPS."""
    if (
        isinstance(target_fps, bool)
        or not isinstance(target_fps, int)
        or not source_fps < target_fps <= MAX_INTERPOLATE_FPS
    ):
        raise ValueError(
            f"interpolate_fps: must be an integer above the source fps {source_fps} "
            f"and at most {MAX_INTERPOLATE_FPS} (got {target_fps!r})"
        )
