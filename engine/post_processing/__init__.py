"""Post-processing: frame interpolation, upscaling, thumbnail and sprite sheet, and the stage composing them.

Decoded Frames (uint8 [F, H, W, 3]) go in; the delivered H.264 MP4, its thumbnail and the
lossless final frames come out (see ``PostProcessor``).
"""

from engine.post_processing.frame_interpolation import MAX_INTERPOLATE_FPS, interpolate_with_ffmpeg
from engine.post_processing.post_processor import PostProcessOptions, PostProcessor, PostProcessResult
from engine.post_processing.thumbnail import make_spritesheet, make_thumbnail, write_spritesheet, write_thumbnail
from engine.post_processing.upscaling import LearnedUpscaler, save_random_swin2sr, upscale_lanczos

__all__ = [
    "MAX_INTERPOLATE_FPS",
    "LearnedUpscaler",
    "PostProcessOptions",
    "PostProcessResult",
    "PostProcessor",
    "interpolate_with_ffmpeg",
    "make_spritesheet",
    "make_thumbnail",
    "save_random_swin2sr",
    "upscale_lanczos",
    "write_spritesheet",
    "write_thumbnail",
]
