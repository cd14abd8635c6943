"""Post-processing with the real pieces: ffmpeg's minterpolate, PIL, a real Swin2SR, PyAV."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from engine.post_processing import (
    LearnedUpscaler,
    PostProcessOptions,
    PostProcessor,
    interpolate_with_ffmpeg,
    make_thumbnail,
    save_random_swin2sr,
    upscale_lanczos,
    write_thumbnail,
)
from engine.post_processing.post_processor import delivered_shape
from engine.post_processing.thumbnail import make_spritesheet, spritesheet_layout, write_spritesheet
from engine.post_processing.upscaling import pad_symmetric
from engine.stage_types import Frames

PATCH_STEP = 6  # pixels the patch moves right per source frame
PATCH_SIZE = 16


def _scene(lefts: list[int], height: int = 48, width: int = 128) -> np.ndarray:
    """A textured patch (what block motion estimation can track) over a smooth gradient,
    at ``lefts[i]`` in frame i."""
    y, x = np.mgrid[0:height, 0:width]
    background = np.stack([x * 80 // width, y * 80 // height, np.full_like(x, 40)], axis=-1).astype(np.uint8)
    cells = np.random.default_rng(0).integers(120, 256, (PATCH_SIZE // 4, PATCH_SIZE // 4, 3), dtype=np.uint8)
    patch = cells.repeat(4, axis=0).repeat(4, axis=1)
    frames = np.repeat(background[None], len(lefts), axis=0)
    for index, left in enumerate(lefts):
        frames[index, 16 : 16 + PATCH_SIZE, left : left + PATCH_SIZE] = patch
    return frames


def _sliding_patch(num_frames: int, height: int = 48, width: int = 128) -> np.ndarray:
    return _scene([4 + PATCH_STEP * index for index in range(num_frames)], height, width)


def _smooth_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 200 // width + 5 * index) % 256, y * 200 // height, np.full_like(x, 100)], axis=-1)
        for index in range(num_frames)
    ]
    return np.asarray(frames, dtype=np.uint8)


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def _decode(path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)], rate


# --- frame interpolation -------------------------------------------------------------------


def test_interpolation_8_to_24_fps_synthesises_the_motion_in_between():
    source = _sliding_patch(8)
    output = interpolate_with_ffmpeg(source, 8, 24)

    # Documented count: every 24 fps timestamp inside the 1 s clip, ceil(8 * 24 / 8).
    assert output.shape == (24, 48, 128, 3)
    assert output.dtype == np.uint8
    # Output frame 3k falls on source frame k; the yuv444p round trip moves values by <= 2.
    assert np.abs(output[0].astype(int) - source[0].astype(int)).max() <= 2
    for k in range(8):
        assert _mean_abs_difference(output[3 * k], source[k]) < 1.0

    # In between, the patch is drawn where it would be at that instant: each such frame is
    # closer to the true in-between picture than to either source neighbour. Duplicating
    # (mi_mode=dup) or cross-fading (mi_mode=blend) neighbours fails this.
    truth = _scene([4 + PATCH_STEP * index // 3 for index in range(24)])
    for k in range(2, 7):  # motion estimation settles after the first two source frames
        before, after = source[k], source[k + 1]
        for index in (3 * k + 1, 3 * k + 2):
            nearest_neighbour = min(_mean_abs_difference(output[index], before), _mean_abs_difference(output[index], after))
            assert nearest_neighbour > 1.0
            assert _mean_abs_difference(output[index], truth[index]) < nearest_neighbour


@pytest.mark.parametrize(
    "num_frames,source_fps,target_fps",
    [(1, 8, 24), (2, 16, 60), (3, 16, 17), (17, 16, 24), (9, 24, 120)],
)
def test_interpolation_keeps_the_clip_duration_even_for_very_short_clips(num_frames, source_fps, target_fps):
    # Fed as-is, minterpolate returns nothing for one or two frames and stops at the
    # second-to-last source frame otherwise; the interpolator must cover the whole clip.
    source = _sliding_patch(num_frames)
    output = interpolate_with_ffmpeg(source, source_fps, target_fps)
    assert output.shape == (math.ceil(num_frames * target_fps / source_fps), 48, 128, 3)
    assert np.abs(output[0].astype(int) - source[0].astype(int)).max() <= 2
    # The tail holds the last source frame, as the source clip does for its last 1/fps.
    assert _mean_abs_difference(output[-1], source[-1]) < 1.0


@pytest.mark.parametrize("target_fps", [8, 4, 121, 240, 24.0, True, None])
def test_interpolation_refuses_fps_that_is_not_above_the_source_or_above_120(target_fps):
    with pytest.raises(ValueError, match="interpolate_fps"):
        interpolate_with_ffmpeg(_sliding_patch(3), 8, target_fps)


def test_interpolation_refuses_a_bad_source_fps_or_frames():
    with pytest.raises(ValueError, match="fps"):
        interpolate_with_ffmpeg(_sliding_patch(3), 0, 24)
    with pytest.raises(ValueError, match=r"uint8 \[F, H, W, 3\]"):
        interpolate_with_ffmpeg(_sliding_patch(3).astype(np.float32), 8, 24)
    with pytest.raises(ValueError, match="at least one frame"):
        interpolate_with_ffmpeg(np.zeros((0, 8, 8, 3), dtype=np.uint8), 8, 24)


# --- Lanczos upscaling ---------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_lanczos_upscale_has_the_factor_and_shrinks_back_to_the_source(factor):
    source = _smooth_frames(3, 20, 30)
    upscaled = upscale_lanczos(source, factor)
    assert upscaled.shape == (3, 20 * factor, 30 * factor, 3)
    assert upscaled.dtype == np.uint8
    for original, big in zip(source, upscaled):
        shrunk = np.asarray(Image.fromarray(big).resize((30, 20), Image.Resampling.BOX))
        assert _mean_abs_difference(shrunk, original) < 2.0


@pytest.mark.parametrize("factor", [1, 5, 0, 2.0, True])
def test_lanczos_refuses_other_factors_naming_upscale(factor):
    with pytest.raises(ValueError, match="upscale"):
        upscale_lanczos(_smooth_frames(1, 8, 8), factor)


# --- learned (Swin2SR) upscaling -----------------------------------------------------------


@pytest.fixture(scope="module")
def swin2sr_x2_dir(tmp_path_factory):
    return save_random_swin2sr(tmp_path_factory.mktemp("swin2sr-x2"), factor=2, seed=0)


def test_symmetric_padding_matches_numpy_even_past_the_image_size():
    image = torch.arange(2 * 3 * 5 * 3, dtype=torch.float32).reshape(2, 3, 5, 3)
    for height, width in [(5, 3), (8, 8), (16, 11)]:  # no pad, pad < size, pad > size
        expected = np.pad(image.numpy(), ((0, 0), (0, 0), (0, height - 5), (0, width - 3)), mode="symmetric")
        np.testing.assert_array_equal(pad_symmetric(image, height, width).numpy(), expected)


def test_learned_upscaler_upscales_any_size_deterministically(swin2sr_x2_dir):
    source = np.random.default_rng(1).integers(0, 256, (5, 30, 20, 3), dtype=np.uint8)  # 30x20: not multiples of 8
    first = LearnedUpscaler(swin2sr_x2_dir)
    second = LearnedUpscaler(swin2sr_x2_dir)
    assert first.factor == 2
    assert first.window_size == 8

    upscaled = first.upscale(source, batch_size=4)
    assert upscaled.shape == (5, 60, 40, 3)
    assert upscaled.dtype == np.uint8
    np.testing.assert_array_equal(second.upscale(source, batch_size=4), upscaled)
    np.testing.assert_array_equal(first.upscale(source, batch_size=1), upscaled)
    # The model looks at its input: different frames give different pictures.
    assert not np.array_equal(upscaled[0], upscaled[1])


def test_learned_upscaler_reads_its_factor_from_the_model(tmp_path):
    upscaler = LearnedUpscaler(save_random_swin2sr(tmp_path / "x3", factor=3, seed=5))
    assert upscaler.factor == 3
    assert upscaler.upscale(_smooth_frames(2, 9, 14)).shape == (2, 27, 42, 3)


def test_random_swin2sr_is_a_pure_function_of_its_seed(tmp_path):
    weights = [
        (save_random_swin2sr(tmp_path / name, factor=2, seed=seed) / "model.safetensors").read_bytes()
        for name, seed in [("a", 0), ("b", 0), ("c", 1)]
    ]
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]


def test_learned_upscaler_refuses_a_missing_model_and_a_bad_batch_size(tmp_path, swin2sr_x2_dir):
    with pytest.raises(FileNotFoundError, match="upscaler_dir"):
        LearnedUpscaler(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="batch_size"):
        LearnedUpscaler(swin2sr_x2_dir).upscale(_smooth_frames(1, 8, 8), batch_size=0)


# --- thumbnail -----------------------------------------------------------------------------


def test_thumbnail_is_the_middle_frame_shrunk_to_fit_as_jpeg():
    frames = _smooth_frames(9, 60, 200)
    frames[4] = 0  # only the middle frame is black
    encoded = make_thumbnail(frames, max_side=50)
    image = Image.open(io.BytesIO(encoded))
    assert image.format == "JPEG"
    assert image.size == (50, 15)
    assert np.asarray(image.convert("RGB")).max() < 10


def test_thumbnail_never_upscales_and_png_is_exact():
    frames = _smooth_frames(4, 24, 40)
    image = Image.open(io.BytesIO(make_thumbnail(frames, max_side=512, image_format="PNG")))
    assert image.format == "PNG"
    assert image.size == (40, 24)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB")), frames[2])


def test_thumbnail_refuses_bad_format_or_size_and_a_failed_write_leaves_nothing(tmp_path):
    frames = _smooth_frames(2, 8, 8)
    with pytest.raises(ValueError, match="image_format"):
        write_thumbnail(frames, tmp_path / "thumbnail.gif", image_format="GIF")
    with pytest.raises(ValueError, match="max_side"):
        make_thumbnail(frames, max_side=0)
    assert list(tmp_path.iterdir()) == []


def test_thumbnail_rewrite_replaces_atomically(tmp_path):
    target = tmp_path / "thumbnail.jpg"
    write_thumbnail(_smooth_frames(1, 16, 16), target)
    write_thumbnail(_smooth_frames(1, 32, 48), target)
    assert Image.open(target).size == (48, 32)
    assert [path.name for path in tmp_path.iterdir()] == ["thumbnail.jpg"]


# --- sprite sheet --------------------------------------------------------------------------


def _grey_frames(count: int, height: int, width: int) -> np.ndarray:
    """Frame i is one flat grey 10 * i: each tile of a sheet says which frame it shows."""
    greys = (np.arange(count) * 10).astype(np.uint8)
    return np.broadcast_to(greys[:, None, None, None], (count, height, width, 3)).copy()


def _tile_greys(image: Image.Image, columns: int, rows: int) -> list[int]:
    pixels = np.asarray(image.convert("L")).astype(int)
    tile_height, tile_width = pixels.shape[0] // rows, pixels.shape[1] // columns
    return [int(pixels[row * tile_height + tile_height // 2, column * tile_width + tile_width // 2])
            for row in range(rows) for column in range(columns)]


def test_spritesheet_is_ten_evenly_spaced_frames_five_to_a_row_each_shrunk_to_160_wide():
    frames = _grey_frames(25, 60, 200)
    image = Image.open(io.BytesIO(make_spritesheet(frames)))
    assert image.format == "JPEG"
    assert image.size == (5 * 160, 2 * 48)  # 200x60 tiles shrunk to 160x48, aspect kept
    # First and last frame included, the rest evenly between (integer steps of 24/9).
    shown = [0, 2, 5, 8, 10, 13, 16, 18, 21, 24]
    assert spritesheet_layout(25, 60, 200).frame_indices == tuple(shown)
    greys = _tile_greys(image, columns=5, rows=2)
    assert all(abs(grey - 10 * index) <= 3 for grey, index in zip(greys, shown, strict=True)), greys


def test_a_short_clip_shows_every_frame_in_one_row_at_its_own_size():
    frames = _grey_frames(3, 16, 40)
    image = Image.open(io.BytesIO(make_spritesheet(frames)))
    assert image.size == (3 * 40, 16)  # never upscaled
    assert [abs(grey - 10 * index) <= 3 for index, grey in enumerate(_tile_greys(image, 3, 1))] == [True] * 3
    assert spritesheet_layout(1, 16, 40).frame_indices == (0,)


@pytest.mark.parametrize(
    ("count", "width", "layout", "size", "tiles"),
    [
        (7, 80, {"max_tiles": 7, "columns": 3, "tile_width": 20}, (3 * 20, 3 * 5), 7),  # a short last row
        (100, 40, {"max_tiles": 4, "columns": 4, "tile_width": 80}, (4 * 40, 20), 4),  # 40 wide stays 40
        (12, 80, {"max_tiles": 12, "columns": 1, "tile_width": 1}, (1, 12 * 1), 12),  # a side never reaches 0
    ],
)
def test_spritesheet_layout_follows_its_arguments(count, width, layout, size, tiles):
    frames = _grey_frames(count, 20, width)
    image = Image.open(io.BytesIO(make_spritesheet(frames, **layout)))
    computed = spritesheet_layout(count, 20, width, **layout)
    assert image.size == computed.size == size
    assert len(computed.frame_indices) == tiles and computed.frame_indices[-1] == count - 1


def test_spritesheet_refuses_bad_arguments_and_writes_atomically(tmp_path):
    frames = _grey_frames(2, 8, 8)
    for argument in ("max_tiles", "columns", "tile_width"):
        with pytest.raises(ValueError, match=argument):
            make_spritesheet(frames, **{argument: 0})
    with pytest.raises(ValueError):
        write_spritesheet(frames, tmp_path / "spritesheet.jpg", columns=True)
    assert list(tmp_path.iterdir()) == []
    write_spritesheet(frames, tmp_path / "spritesheet.jpg")
    assert [path.name for path in tmp_path.iterdir()] == ["spritesheet.jpg"]


# --- the PostProcessor stage ---------------------------------------------------------------


def test_post_processor_interpolates_upscales_and_writes_four_files(tmp_path):
    source = _sliding_patch(9, height=32, width=80)
    result = PostProcessor().process(
        Frames("req-1", source, 8), PostProcessOptions(interpolate_fps=24, upscale=2), tmp_path
    )

    assert (result.num_frames, result.width, result.height, result.fps) == (27, 160, 64, 24)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["frames.npy", "spritesheet.jpg", "thumbnail.jpg",
                                                                "video.mp4"]
    assert result.video_path == str(tmp_path / "video.mp4")

    decoded, rate = _decode(result.video_path)
    assert len(decoded) == 27
    assert decoded[0].shape == (64, 160, 3)
    assert rate == Fraction(24)

    final = np.load(result.frames_path)
    np.testing.assert_array_equal(final, upscale_lanczos(interpolate_with_ffmpeg(source, 8, 24), 2))
    assert _mean_abs_difference(np.asarray(decoded), final) < 8  # H.264 is lossy, same picture

    thumbnail = Image.open(result.thumbnail_path)
    assert (thumbnail.format, thumbnail.size) == ("JPEG", (160, 64))
    # The sheet shows the delivered frames: 10 of the 27, 160x64 each (already 160 wide).
    assert result.spritesheet_path == str(tmp_path / "spritesheet.jpg")
    assert Image.open(result.spritesheet_path).size == (5 * 160, 2 * 64)
    assert delivered_shape(9, 80, 32, 8, interpolate_fps=24, upscale=2) == (27, 160, 64, 24)


def test_post_processor_without_options_delivers_the_decoded_frames(tmp_path):
    source = _smooth_frames(5, 16, 32)
    result = PostProcessor().process(Frames("req-2", source, 16), PostProcessOptions(upscale=1), tmp_path)
    assert (result.num_frames, result.width, result.height, result.fps) == (5, 32, 16, 16)
    np.testing.assert_array_equal(np.load(result.frames_path), source)
    assert len(_decode(result.video_path)[0]) == 5

    skipped = PostProcessor().process(
        Frames("req-3", source, 16), PostProcessOptions(write_frames=False), tmp_path / "no-frames"
    )
    assert skipped.frames_path is None
    assert sorted(path.name for path in (tmp_path / "no-frames").iterdir()) == ["spritesheet.jpg", "thumbnail.jpg",
                                                                                "video.mp4"]


def test_post_processor_uses_the_learned_upscaler_when_configured(tmp_path, swin2sr_x2_dir):
    source = _smooth_frames(3, 16, 24)
    processor = PostProcessor(upscaler_dir=str(swin2sr_x2_dir))
    result = processor.process(Frames("req-4", source, 16), PostProcessOptions(upscale=2), tmp_path / "out")
    assert (result.width, result.height) == (48, 32)
    np.testing.assert_array_equal(np.load(result.frames_path), LearnedUpscaler(swin2sr_x2_dir).upscale(source))

    with pytest.raises(ValueError, match="upscale: .* x2"):
        processor.process(Frames("req-5", source, 16), PostProcessOptions(upscale=4), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize(
    "options,field",
    [
        (dict(interpolate_fps=121), "interpolate_fps"),
        (dict(interpolate_fps=0), "interpolate_fps"),
        (dict(interpolate_fps=30.0), "interpolate_fps"),
        (dict(upscale=5), "upscale"),
        (dict(upscale=True), "upscale"),
        (dict(write_frames="yes"), "write_frames"),
    ],
)
def test_post_process_options_name_the_bad_field(options, field):
    with pytest.raises(ValueError, match=field):
        PostProcessOptions(**options)


def test_post_processor_refuses_a_non_increasing_fps_before_writing_anything(tmp_path):
    frames = Frames("req-6", _smooth_frames(3, 16, 16), 24)
    with pytest.raises(ValueError, match="interpolate_fps"):
        PostProcessor().process(frames, PostProcessOptions(interpolate_fps=24), tmp_path / "out")
    with pytest.raises(ValueError, match="even sides"):
        PostProcessor().process(
            Frames("req-7", _smooth_frames(2, 15, 16), 16), PostProcessOptions(upscale=3), tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_every_processed_video_carries_the_flicker_of_the_decoded_clip(tmp_path):
    from engine.post_processing import PostProcessor
    from engine.post_processing.post_processor import PostProcessOptions
    from engine.quality.flicker import flicker_score

    rng = np.random.default_rng(5)
    steady = np.full((9, 32, 32, 3), 100, dtype=np.uint8)
    strobing = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    results = {}
    for name, array in {"steady": steady, "strobing": strobing}.items():
        result = PostProcessor().process(Frames(request_id=name, frames=array, fps=8),
                                         PostProcessOptions(upscale=2, write_frames=False), tmp_path / name)
        results[name] = result.flicker
        # Measured on what the model decoded, not on the upscaled delivery.
        assert result.flicker == round(flicker_score(array), 4)
    assert results["steady"] == 0.0 and results["strobing"] > 10
