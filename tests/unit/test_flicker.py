"""The flicker score: ~0 for still or smoothly moving video, higher the more frames jump."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.quality.flicker import flicker_score
from engine.toy_world.grammar import parse_prompt
from engine.toy_world.render import render_clip


def moving_clip() -> np.ndarray:
    scene = parse_prompt("a red circle moves to the right and a blue square moves up on a gray background")
    return render_clip(scene, seed=3)


def with_brightness_jumps(clip: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Each frame brighter or darker by its own random amount, as a flickering model does."""
    offsets = rng.uniform(-amount, amount, (len(clip), 1, 1, 1))
    return np.clip(np.rint(clip + offsets), 0, 255).astype(np.uint8)


def with_noise(clip: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(np.rint(clip + rng.normal(0.0, sigma, clip.shape)), 0, 255).astype(np.uint8)


def test_a_still_clip_scores_zero():
    clip = np.repeat(moving_clip()[:1], 17, axis=0)
    assert flicker_score(clip) == pytest.approx(0.0, abs=1e-6)


def test_a_smoothly_moving_clip_scores_far_below_one_with_flicker():
    rng = np.random.default_rng(0)
    clean = flicker_score(moving_clip())
    assert clean < 1.0  # 0-255 levels: flat shapes moving smoothly are almost fully explained by flow
    assert flicker_score(with_brightness_jumps(moving_clip(), rng, 10)) > 5 * clean
    assert flicker_score(with_noise(moving_clip(), rng, 8)) > 5 * clean


def test_motion_is_compensated():
    # A smooth texture sliding 2 px a frame: plain frame differences are large, the warped
    # ones are not.
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 256, (96, 160, 3), dtype=np.uint8)
    texture = np.asarray(Image.fromarray(texture).filter(ImageFilter.GaussianBlur(3)))
    texture = np.clip((texture.astype(np.float32) - texture.mean()) * 4 + 128, 0, 255).astype(np.uint8)
    clip = np.stack([texture[:, 2 * index : 2 * index + 128] for index in range(12)])
    plain_difference = np.abs(np.diff(clip.astype(np.float32), axis=0)).mean()
    assert flicker_score(clip) < plain_difference / 4


@pytest.mark.parametrize("kind", ["brightness", "noise"])
def test_more_flicker_scores_higher(kind):
    levels = (3.0, 8.0, 20.0)
    scores = []
    for level in levels:
        rng = np.random.default_rng(2)
        clip = moving_clip()
        clip = with_brightness_jumps(clip, rng, level) if kind == "brightness" else with_noise(clip, rng, level)
        scores.append(flicker_score(clip))
    assert flicker_score(moving_clip()) < scores[0] < scores[1] < scores[2]


def test_large_frames_are_scored_after_downscaling():
    # 640x360 goes through the downscale to 256x144; a still frame still scores ~0 (flow on
    # identical textured frames is not exactly zero) and per-frame brightness jumps still show.
    rng = np.random.default_rng(3)
    frame = np.asarray(Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)).resize((640, 360)))
    still = np.repeat(frame[None], 4, axis=0)
    assert flicker_score(still) < 0.1
    assert flicker_score(with_brightness_jumps(still, rng, 20)) > 3


def test_fewer_than_two_frames_score_zero():
    assert flicker_score(moving_clip()[:1]) == 0.0
    assert flicker_score(np.zeros((0, 8, 8, 3), np.uint8)) == 0.0


@pytest.mark.parametrize(
    ("frames", "problem"),
    [
        (np.zeros((17, 64, 64), np.uint8), "shape"),
        (np.zeros((17, 64, 64, 4), np.uint8), "shape"),
        (np.zeros((17, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((2, 0, 64, 3), np.uint8), "1x1"),
        ([[[[0, 0, 0]]]], "numpy array"),
    ],
)
def test_bad_input_is_refused_naming_the_problem(frames, problem):
    with pytest.raises(ValueError, match=problem):
        flicker_score(frames)
