"""MP4 and .npy outputs, checked by decoding them with PyAV (FFmpeg inside)."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from engine.stage_types import Frames
from engine.video_io import write_mp4, write_npy


def _gradient_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients: content an H.264 encoder keeps close to the source."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 255 // width + 8 * index) % 256, y * 255 // height, np.full_like(x, 128)], axis=-1)
        for index in range(num_frames)
    ]
    return np.asarray(frames, dtype=np.uint8)


def _probe(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        return stream.codec_context.name, stream.codec_context.pix_fmt, stream.average_rate, decoded


@pytest.mark.parametrize("num_frames,width,height,fps", [(9, 32, 32, 16), (17, 64, 48, 24), (1, 48, 16, 8)])
def test_mp4_is_h264_yuv420p_with_expected_frames_size_and_fps(tmp_path, num_frames, width, height, fps):
    source = _gradient_frames(num_frames, height, width)
    path = write_mp4(Frames("r", source, fps), tmp_path / "video.mp4")
    codec, pix_fmt, rate, decoded = _probe(path)
    assert (codec, pix_fmt) == ("h264", "yuv420p")
    assert rate == Fraction(fps)
    assert len(decoded) == num_frames
    assert decoded[0].shape == (height, width, 3)
    # Lossy, but it is the same picture.
    assert np.abs(np.asarray(decoded, dtype=int) - source.astype(int)).mean() < 8


def test_npy_is_lossless(tmp_path):
    source = np.random.default_rng(0).integers(0, 256, (5, 16, 32, 3), dtype=np.uint8)
    path = write_npy(Frames("r", source, 16), tmp_path / "frames.npy")
    loaded = np.load(path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, source)


def test_failed_write_leaves_no_file(tmp_path):
    odd = np.zeros((3, 15, 16, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="even"):
        write_mp4(Frames("r", odd, 16), tmp_path / "odd.mp4")
    with pytest.raises(ValueError, match=r"uint8 \[F, H, W, 3\]"):
        write_npy(Frames("r", odd.astype(np.float32), 16), tmp_path / "float.npy")
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_atomically_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "video.mp4"
    write_mp4(Frames("r", _gradient_frames(5, 32, 32), 16), target)
    write_mp4(Frames("r", _gradient_frames(9, 32, 32), 16), target)
    assert len(_probe(target)[3]) == 9
    assert [path.name for path in tmp_path.iterdir()] == ["video.mp4"]
