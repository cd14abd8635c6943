"""Learned frame interpolation through a TorchScript model, as RIFE/FILM exports ship."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from engine.post_processing.learned_interpolation import LearnedInterpolator
from engine.post_processing.post_processor import PostProcessOptions, PostProcessor
from engine.stage_types import Frames


class TinyInterpolationNet(nn.Module):
    """A random-weight stand-in with the RIFE/FILM export contract (real TorchScript)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.refine = nn.Conv2d(7, 3, kernel_size=3, padding=1)

    def forward(self, frame0: torch.Tensor, frame1: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        blend = frame0 * (1 - timestep) + frame1 * timestep
        features = torch.cat([frame0, frame1, timestep.expand(-1, 1, frame0.shape[2], frame0.shape[3])], dim=1)
        return (blend + 0.1 * torch.tanh(self.refine(features))).clamp(0, 1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("vfi") / "tiny_vfi.pt"
    torch.jit.script(TinyInterpolationNet()).save(str(path))
    return path


def _frames(count=5, height=16, width=24):
    return np.random.default_rng(1).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def test_output_timeline_copies_source_frames_and_predicts_the_rest(model_path):
    frames = _frames()
    output = LearnedInterpolator(model_path).interpolate(frames, source_fps=8, target_fps=24)
    assert output.shape == (math.ceil(5 * 24 / 8), 16, 24, 3) and output.dtype == np.uint8
    for source_index in range(5):
        np.testing.assert_array_equal(output[3 * source_index], frames[source_index])
    # The frame a third of the way from frame 1 to frame 2 is the model's prediction.
    reference = TinyInterpolationNet().eval()
    with torch.no_grad():
        to_tensor = lambda f: torch.from_numpy(f[None]).permute(0, 3, 1, 2).float() / 255  # noqa: E731
        predicted = reference(to_tensor(frames[1]), to_tensor(frames[2]), torch.full((1, 1, 1, 1), 1 / 3))
    expected = (predicted.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()[0]
    np.testing.assert_array_equal(output[4], expected)
    assert not np.array_equal(output[4], frames[1]) and not np.array_equal(output[4], frames[2])


def test_batch_size_does_not_change_the_result(model_path):
    interpolator = LearnedInterpolator(model_path)
    frames = _frames(4)
    one = interpolator.interpolate(frames, 10, 25, batch_size=1)
    many = interpolator.interpolate(frames, 10, 25, batch_size=16)
    assert np.abs(one.astype(int) - many.astype(int)).max() <= 1


def test_bad_arguments_are_refused(model_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="interpolation_model"):
        LearnedInterpolator(tmp_path / "missing.pt")
    interpolator = LearnedInterpolator(model_path)
    with pytest.raises(ValueError, match="interpolate_fps"):
        interpolator.interpolate(_frames(), 24, 24)
    with pytest.raises(ValueError, match="batch_size"):
        interpolator.interpolate(_frames(), 8, 24, batch_size=0)


def test_post_processor_uses_the_configured_model(model_path, tmp_path):
    frames = Frames("r", _frames(3, 16, 16), fps=8)
    learned = PostProcessor(interpolation_model=str(model_path)).process(
        frames, PostProcessOptions(interpolate_fps=16), tmp_path / "learned"
    )
    expected = LearnedInterpolator(model_path).interpolate(frames.frames, 8, 16)
    np.testing.assert_array_equal(np.load(learned.frames_path), expected)
    assert (learned.num_frames, learned.fps) == (6, 16)
