"""The PostProcessor stage: decoded Frames -> the delivered MP4, thumbnail, sprite sheet and lossless frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.frame_array import checked_frames
from engine.quality.flicker import flicker_score
from engine.post_processing.frame_interpolation import (
    MAX_INTERPOLATE_FPS,
    check_interpolate_fps,
    interpolate_with_ffmpeg,
    interpolated_frame_count,
)
from engine.post_processing.learned_interpolation import LearnedInterpolator
from engine.post_processing.thumbnail import write_spritesheet, write_thumbnail
from engine.post_processing.upscaling import (
    LANCZOS_FACTORS,
    LearnedUpscaler,
    check_upscale_factor,
    upscale_lanczos,
)
from engine.stage_types import Frames
from engine.video_io import write_mp4, write_npy

VIDEO_FILE = "video.mp4"
THUMBNAIL_FILE = "thumbnail.jpg"
SPRITESHEET_FILE = "spritesheet.jpg"
FRAMES_FILE = "frames.npy"


@dataclass(frozen=True)
class PostProcessOptions:
    interpolate_fps: int | None = None  # None = keep the decoded fps
    upscale: int | None = None  # factor; None or 1 = off
    write_frames: bool = True  # also write the lossless frames.npy

    def __post_init__(self):
        fps = self.interpolate_fps
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, int) or not 1 <= fps <= MAX_INTERPOLATE_FPS):
            raise ValueError(f"interpolate_fps: must be an integer from 1 to {MAX_INTERPOLATE_FPS} or None (got {fps!r})")
        if self.upscale is not None:
            check_upscale_factor(self.upscale, (1, *LANCZOS_FACTORS))
        if not isinstance(self.write_frames, bool):
            raise ValueError(f"write_frames: must be true or false (got {self.write_frames!r})")

    @property
    def upscale_factor(self) -> int:
        return self.upscale or 1


@dataclass(frozen=True)
class PostProcessResult:
    video_path: str
    thumbnail_path: str
    frames_path: str | None
    num_frames: int
    width: int
    height: int
    fps: int
    spritesheet_path: str | None = None  # None: not written (a stand-in's result)
    # The decoded clip's flicker (engine/quality/flicker.py), before interpolation and upscaling:
    # the model's temporal consistency, not the post-processing's. None: not measured.
    flicker: float | None = None


def delivered_shape(num_frames: int, width: int, height: int, fps: int, *, interpolate_fps: int | None = None,
                    upscale: int | None = None) -> tuple[int, int, int, int]:
    """(frames, width, height, fps) that ``PostProcessor.process`` delivers for a decoded clip of
    this shape: what a job will deliver, known before it runs."""
    if interpolate_fps is not None:
        num_frames, fps = interpolated_frame_count(num_frames, fps, interpolate_fps), interpolate_fps
    factor = upscale or 1
    return num_frames, width * factor, height * factor, fps


class PostProcessor:
    """Interpolates, upscales, then writes the video, its thumbnail, its sprite sheet and (optionally) its frames.

    With ``upscaler_dir`` set, upscaling uses that learned Swin2SR model (fixed factor);
    otherwise Lanczos at any factor in LANCZOS_FACTORS. With ``interpolation_model`` (a
    TorchScript file) set, interpolation uses that learned model; otherwise ffmpeg's
    motion-compensated minterpolate.
    """

    def __init__(self, upscaler_dir: str | None = None, device: str = "cpu", interpolation_model: str | None = None):
        self.learned_upscaler = LearnedUpscaler(upscaler_dir, device=device) if upscaler_dir else None
        self.learned_interpolator = (
            LearnedInterpolator(interpolation_model, device=device) if interpolation_model else None
        )

    def process(self, frames: Frames, options: PostProcessOptions, output_dir: Path) -> PostProcessResult:
        array = checked_frames(frames.frames)
        # Refuse a bad request before any slow work starts.
        if options.interpolate_fps is not None:
            check_interpolate_fps(options.interpolate_fps, frames.fps)
        factor = options.upscale_factor
        learned = self.learned_upscaler
        if factor > 1 and learned is not None and factor != learned.factor:
            raise ValueError(f"upscale: this post-processor's learned upscaler is x{learned.factor} (got {factor})")
        _, height, width, _ = array.shape
        if (height * factor) % 2 or (width * factor) % 2:
            raise ValueError(
                f"frames: H.264 (yuv420p) needs even sides, and {width}x{height} upscaled x{factor} "
                f"is {width * factor}x{height * factor}"
            )

        flicker = flicker_score(array)
        # Interpolate before upscaling: motion estimation on the decoded size costs factor^2
        # less than on the upscaled one, and Lanczos/Swin2SR need no temporal context.
        fps = frames.fps
        if options.interpolate_fps is not None:
            if self.learned_interpolator is not None:
                array = self.learned_interpolator.interpolate(array, frames.fps, options.interpolate_fps)
            else:
                array = interpolate_with_ffmpeg(array, frames.fps, options.interpolate_fps)
            fps = options.interpolate_fps
        if factor > 1:
            array = learned.upscale(array) if learned is not None else upscale_lanczos(array, factor)

        final = Frames(request_id=frames.request_id, frames=array, fps=fps)
        output_dir = Path(output_dir)
        video_path = write_mp4(final, output_dir / VIDEO_FILE)
        thumbnail_path = write_thumbnail(array, output_dir / THUMBNAIL_FILE)
        spritesheet_path = write_spritesheet(array, output_dir / SPRITESHEET_FILE)
        frames_path = write_npy(final, output_dir / FRAMES_FILE) if options.write_frames else None
        num_frames, height, width, _ = array.shape
        return PostProcessResult(
            video_path=str(video_path),
            thumbnail_path=str(thumbnail_path),
            frames_path=str(frames_path) if frames_path is not None else None,
            num_frames=num_frames,
            width=width,
            height=height,
            fps=fps,
            spritesheet_path=str(spritesheet_path),
            flicker=round(flicker, 4),
        )
