"""The toy-world adherence detector on clips whose answers are known: clean renders, renders
degraded the way generated video is, and clips judged against the wrong prompt."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine.quality.toy_adherence import AdherenceVerdict, ObjectVerdict, detect_tracks, judge_clip, summarize
from engine.toy_world.grammar import BACKGROUNDS, COLOURS, ToyObject, ToyScene, all_objects, parse_prompt
from engine.toy_world.render import render_clip
from tests.support.toy_scenes import two_object_scenes

SINGLE_OBJECT_SCENES = [ToyScene((obj,), background) for obj in all_objects() for background in BACKGROUNDS]


def blurred(clip: np.ndarray, radius: float = 1.0) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius))) for frame in clip])


def noisy(clip: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    return np.clip(np.rint(clip + rng.normal(0.0, sigma, clip.shape)), 0, 255).astype(np.uint8)


def colour_jittered(clip: np.ndarray, rng: np.random.Generator, amount: float = 15.0) -> np.ndarray:
    """Every channel of the whole clip off by up to ``amount``, plus a smaller per-frame wobble."""
    offset = rng.uniform(-amount, amount, (1, 1, 1, 3)) + rng.uniform(-amount / 3, amount / 3, (len(clip), 1, 1, 3))
    return np.clip(np.rint(clip + offset), 0, 255).astype(np.uint8)


def with_stray_pixels(clip: np.ndarray, rng: np.random.Generator, per_frame: int = 20) -> np.ndarray:
    """Random pixels set to random palette colours, every frame."""
    out = clip.copy()
    palette = np.asarray(list(COLOURS.values()), np.uint8)
    frames, height, width = clip.shape[:3]
    for frame in range(frames):
        ys, xs = rng.integers(0, height, per_frame), rng.integers(0, width, per_frame)
        out[frame, ys, xs] = palette[rng.integers(0, len(palette), per_frame)]
    return out


def degraded(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return with_stray_pixels(noisy(colour_jittered(blurred(clip), rng), rng), rng)


def describe(verdict: AdherenceVerdict) -> list:
    return [verdict.background_correct] + [
        (item.expected, item.found, item.detected_shape, item.detected_motion) for item in verdict.objects
    ]


def assert_judged_right(clip: np.ndarray, scene: ToyScene) -> None:
    verdict = judge_clip(clip, scene)
    assert verdict.full and verdict.colour_and_motion, describe(verdict)
    for item in verdict.objects:
        assert (item.detected_shape, item.detected_motion) == (item.expected.shape, item.expected.motion)


def test_every_clean_single_object_clip_is_judged_fully_right():
    for seed, scene in enumerate(SINGLE_OBJECT_SCENES):
        assert_judged_right(render_clip(scene, seed=seed), scene)


def test_clean_two_object_clips_are_judged_fully_right():
    for seed, scene in enumerate(two_object_scenes(30, seed=0)):
        assert_judged_right(render_clip(scene, seed=seed), scene)


def test_degraded_clips_are_still_judged_fully_right():
    # Blur (radius 1 px), colour off by up to ~20 per channel, noise of sigma 8 and 20 stray
    # palette-coloured pixels a frame, all at once; every combination on one background.
    rng = np.random.default_rng(0)
    objects = all_objects()
    scenes = [ToyScene((obj,), list(BACKGROUNDS)[index % 2]) for index, obj in enumerate(objects)]
    scenes += two_object_scenes(10, seed=1)
    for seed, scene in enumerate(scenes):
        assert_judged_right(degraded(render_clip(scene, seed=seed), rng), scene)


@pytest.mark.parametrize(
    "degrade",
    [
        lambda clip, rng: blurred(clip, radius=1.5),
        lambda clip, rng: noisy(clip, rng, sigma=12),
        lambda clip, rng: colour_jittered(clip, rng, amount=25),
        lambda clip, rng: with_stray_pixels(clip, rng, per_frame=60),
    ],
    ids=["heavier-blur", "heavier-noise", "heavier-colour-error", "more-stray-pixels"],
)
def test_each_degradation_alone_at_a_heavier_level_is_survived(degrade):
    rng = np.random.default_rng(2)
    for seed, scene in enumerate(SINGLE_OBJECT_SCENES[::6] + two_object_scenes(4, seed=2)):
        assert_judged_right(degrade(render_clip(scene, seed=seed), rng), scene)


def test_other_sizes_and_lengths_are_judged_right():
    for seed, scene in enumerate(SINGLE_OBJECT_SCENES[::9]):
        assert_judged_right(render_clip(scene, seed=seed, width=96, height=64, num_frames=33), scene)
        assert_judged_right(render_clip(scene, seed=seed, width=64, height=96, num_frames=9), scene)


def test_a_few_missing_frames_do_not_change_the_verdict():
    scene = parse_prompt("a yellow triangle moves down and a blue circle shrinks on a gray background")
    clip = render_clip(scene, seed=4)
    clip[[2, 8, 13]] = BACKGROUNDS["gray"]
    assert_judged_right(clip, scene)


def judged_against(prompt_of_clip: str, prompt_judged: str, seed: int = 0) -> AdherenceVerdict:
    clip = render_clip(parse_prompt(prompt_of_clip), seed=seed)
    return judge_clip(clip, parse_prompt(prompt_judged))


def test_the_wrong_direction_is_judged_wrong_on_motion_only():
    verdict = judged_against(
        "a red circle moves to the left on a black background", "a red circle moves to the right on a black background"
    )
    (item,) = verdict.objects
    assert item.colour_correct and item.shape_correct and verdict.background_correct
    assert not item.motion_correct and item.detected_motion == "moves to the left"
    assert not verdict.colour_and_motion and not verdict.full


@pytest.mark.parametrize(
    ("shown", "named"),
    [
        ("moves up", "moves down"),
        ("grows", "shrinks"),
        ("shrinks", "grows"),
        ("moves down", "grows"),
        ("grows", "moves to the right"),
    ],
)
def test_every_wrong_motion_is_judged_wrong(shown, named):
    verdict = judged_against(
        f"a green square {shown} on a gray background",
        f"a green square {named} on a gray background",
    )
    assert verdict.objects[0].detected_motion == shown
    assert not verdict.objects[0].motion_correct


def test_the_wrong_colour_is_not_found():
    verdict = judged_against(
        "a red circle moves up on a black background", "a blue circle moves up on a black background"
    )
    (item,) = verdict.objects
    assert not item.found and not item.colour_correct and not item.shape_correct and not item.motion_correct
    assert item.detected_shape is None and item.detected_motion is None
    assert verdict.background_correct and not verdict.colour_and_motion


@pytest.mark.parametrize(("shown", "named"), [("circle", "square"), ("square", "triangle"), ("triangle", "circle")])
def test_the_wrong_shape_is_judged_wrong_on_shape_only(shown, named):
    verdict = judged_against(
        f"a white {shown} grows on a gray background",
        f"a white {named} grows on a gray background",
    )
    (item,) = verdict.objects
    assert item.detected_shape == shown and not item.shape_correct
    assert item.motion_correct and verdict.colour_and_motion and not verdict.full


def test_the_wrong_background_is_judged_wrong_on_background_only():
    verdict = judged_against(
        "a blue square shrinks on a black background", "a blue square shrinks on a gray background"
    )
    assert not verdict.background_correct and verdict.colour_and_motion and not verdict.full


def test_one_missing_object_of_two_fails_the_clip():
    verdict = judged_against(
        "a red circle moves up on a black background",
        "a red circle moves up and a green square grows on a black background",
    )
    assert [item.found for item in verdict.objects] == [True, False]
    assert not verdict.colour_and_motion and not verdict.full


def test_a_still_object_has_no_motion():
    scene = parse_prompt("a yellow square moves to the right on a black background")
    still = np.repeat(render_clip(scene, seed=0)[:1], 17, axis=0)
    (item,) = judge_clip(still, scene).objects
    assert item.found and item.detected_shape == "square"
    assert item.detected_motion == "none" and not item.motion_correct
    assert detect_tracks(still)["yellow"].motion == "none"


def test_a_clip_of_background_only_finds_nothing():
    rng = np.random.default_rng(3)
    for background, rgb in BACKGROUNDS.items():
        empty = np.empty((17, 64, 64, 3), np.uint8)
        empty[:] = rgb
        assert detect_tracks(empty) == {}
        assert detect_tracks(noisy(with_stray_pixels(empty, rng), rng)) == {}
        scene = ToyScene((ToyObject("white", "circle", "grows"),), background)
        verdict = judge_clip(empty, scene)
        assert verdict.background_correct and not verdict.objects[0].found and not verdict.colour_and_motion


def test_a_clip_filled_with_one_object_colour_shows_no_object():
    filled = np.empty((17, 64, 64, 3), np.uint8)
    filled[:] = COLOURS["red"]
    assert detect_tracks(filled) == {}
    verdict = judge_clip(filled, ToyScene((ToyObject("red", "square", "grows"),), "black"))
    assert not verdict.background_correct and not verdict.objects[0].found


def test_tracks_follow_the_object():
    scene = parse_prompt("a green circle moves to the right on a gray background")
    track = detect_tracks(render_clip(scene, seed=1))["green"]
    assert track.frame_indices == tuple(range(17)) and track.present_share == 1.0
    xs = [x for x, _ in track.centroids]
    assert xs == sorted(xs) and 0.40 * 64 - 1 <= xs[-1] - xs[0] <= 0.50 * 64 + 1
    assert (track.shape, track.motion) == ("circle", "moves to the right")


def test_bad_frames_are_refused():
    scene = parse_prompt("a red circle grows on a black background")
    with pytest.raises(ValueError):
        judge_clip(np.zeros((17, 64, 64, 3), np.float32), scene)
    with pytest.raises(ValueError):
        judge_clip(np.zeros((64, 64, 3), np.uint8), scene)


def verdict_of(*objects: tuple[bool, bool, bool], background: bool = True) -> AdherenceVerdict:
    items = tuple(
        ObjectVerdict(
            expected=ToyObject("red", "circle", "grows"),
            found=colour,
            detected_shape="circle" if colour else None,
            detected_motion="grows" if colour else None,
            colour_correct=colour,
            shape_correct=shape,
            motion_correct=motion,
        )
        for colour, shape, motion in objects
    )
    return AdherenceVerdict(items, background)


def test_summarize_gives_the_share_of_clips_right_on_each_count():
    verdicts = [
        verdict_of((True, True, True)),  # fully right
        verdict_of((True, False, True)),  # wrong shape
        verdict_of((True, True, True), (True, True, False)),  # second object's motion wrong
        verdict_of((True, True, True), background=False),
    ]
    assert summarize(verdicts) == {
        "colour_and_motion": 3 / 4,
        "full": 1 / 4,
        "colour": 1.0,
        "shape": 3 / 4,
        "motion": 3 / 4,
        "background": 3 / 4,
    }
    assert summarize([]) == dict.fromkeys(summarize(verdicts), 0.0)


def test_verdicts_are_frozen():
    verdict = verdict_of((True, True, True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        verdict.background_correct = False
