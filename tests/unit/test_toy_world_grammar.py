"""The toy world's grammar (prompts both ways, the held-out split, random scenes) and its renderer."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.toy_world.grammar import (
    BACKGROUNDS,
    COLOURS,
    HELD_OUT_COMBINATIONS,
    MOTIONS,
    SHAPES,
    ToyObject,
    ToyScene,
    all_objects,
    held_out_prompts,
    held_out_scenes,
    is_held_out,
    parse_prompt,
    sample_scene,
    scene_to_prompt,
)
from engine.toy_world.render import plan_trajectories, render_batch, render_clip
from tests.support.toy_scenes import two_object_scenes

SINGLE_OBJECT_SCENES = [ToyScene((obj,), background) for obj in all_objects() for background in BACKGROUNDS]


# --- prompts ---------------------------------------------------------------------------------


def test_canonical_prompts_read_as_plain_sentences():
    red_circle = ToyObject("red", "circle", "moves to the right")
    assert scene_to_prompt(ToyScene((red_circle,), "black")) == "a red circle moves to the right on a black background"
    two = ToyScene((red_circle, ToyObject("blue", "square", "moves up")), "gray")
    assert scene_to_prompt(two) == "a red circle moves to the right and a blue square moves up on a gray background"


def test_every_single_object_prompt_parses_back_to_its_scene():
    assert len(SINGLE_OBJECT_SCENES) == len(COLOURS) * len(SHAPES) * len(MOTIONS) * len(BACKGROUNDS) == 180
    for scene in SINGLE_OBJECT_SCENES:
        assert parse_prompt(scene_to_prompt(scene)) == scene


def test_two_object_prompts_parse_back_to_their_scenes():
    for scene in two_object_scenes(200):
        assert parse_prompt(scene_to_prompt(scene)) == scene


def test_parsing_ignores_case_spacing_and_a_trailing_period():
    expected = parse_prompt("a red circle moves to the right and a blue square moves up on a gray background")
    assert expected is not None
    for text in (
        "A Red Circle moves to the RIGHT and a blue square moves up on a gray background.",
        "  a red   circle moves to the right\tand a blue square\nmoves up on a gray background .  ",
        "a red circle moves to the right, and a blue square moves up, on a gray background",
    ):
        assert parse_prompt(text) == expected


@pytest.mark.parametrize(
    ("paraphrase", "canonical"),
    [
        ("a red circle moves left on a black background", "a red circle moves to the left on a black background"),
        ("a red circle goes right on black", "a red circle moves to the right on a black background"),
        ("a red circle moving up on black", "a red circle moves up on a black background"),
        (
            "the white triangle is moving downwards on the grey background",
            "a white triangle moves down on a gray background",
        ),
        (
            "a blue square slides to the left against a gray backdrop",
            "a blue square moves to the left on a gray background",
        ),
        ("a green disc gets bigger on black", "a green circle grows on a black background"),
        ("a yellow square is shrinking on a gray background", "a yellow square shrinks on a gray background"),
        ("a green triangle rises over a black background", "a green triangle moves up on a black background"),
        ("a red square falls on black", "a red square moves down on a black background"),
        (
            "a red circle heads left while a blue triangle expands, on grey",
            "a red circle moves to the left and a blue triangle grows on a gray background",
        ),
        (
            "a white square travels rightwards, a yellow circle gets smaller on a black background.",
            "a white square moves to the right and a yellow circle shrinks on a black background",
        ),
    ],
)
def test_paraphrases_parse_to_the_canonical_scene(paraphrase, canonical):
    assert parse_prompt(paraphrase) == parse_prompt(canonical) is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        ".",
        "a cat surfing at sunset",
        "a purple circle moves up on a black background",  # colour outside the vocabulary
        "a red hexagon moves up on a black background",  # shape outside the vocabulary
        "a red circle spins on a black background",  # motion outside the vocabulary
        "a red circle moves diagonally on a black background",
        "a red circle moves up",  # no background
        "a red circle moves up on a white background",  # background outside the vocabulary
        "a red circle on a black background",  # no motion
        "red moves up on a black background",  # no shape
        "a red circle moves up and a red square moves down on a black background",  # same colour twice
        "a red circle moves up and a blue square moves down and a green triangle grows on a black background",
        "a red circle moves up on a black background and then explodes",
        "a red circle moves up on a black background on a gray background",
        "a red circle moves to the left to the left on a black background",
    ],
)
def test_text_outside_the_grammar_parses_to_none(text):
    assert parse_prompt(text) is None


def test_non_strings_parse_to_none():
    for value in (None, 3, b"a red circle moves up on a black background", ["a"]):
        assert parse_prompt(value) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text_never_raises(text):
    result = parse_prompt(text)
    assert result is None or isinstance(result, ToyScene)


_GRAMMAR_WORDS = sorted(
    {word for phrase in (*COLOURS, *SHAPES, *MOTIONS, *BACKGROUNDS) for word in phrase.split()}
    | {"a", "an", "and", "on", "background", ",", ".", "left", "right", "grey", "moving", "goes"}
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_GRAMMAR_WORDS), max_size=20).map(" ".join))
def test_near_grammatical_word_salad_never_raises_and_parses_only_to_its_canonical_prompt(text):
    result = parse_prompt(text)
    if result is not None:
        assert parse_prompt(scene_to_prompt(result)) == result


# --- scene validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ToyObject("purple", "circle", "grows"),
        lambda: ToyObject("red", "hexagon", "grows"),
        lambda: ToyObject("red", "circle", "spins"),
        lambda: ToyScene((), "black"),
        lambda: ToyScene(tuple(all_objects()[i] for i in (0, 20, 40)), "black"),
        lambda: ToyScene((ToyObject("red", "circle", "grows"), ToyObject("red", "square", "shrinks")), "black"),
        lambda: ToyScene((ToyObject("red", "circle", "grows"),), "white"),
    ],
)
def test_invalid_objects_and_scenes_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_scenes_are_frozen_and_hashable_even_when_built_from_a_list():
    scene = ToyScene([ToyObject("red", "circle", "grows")], "black")
    assert isinstance(scene.objects, tuple)
    assert hash(scene) == hash(ToyScene((ToyObject("red", "circle", "grows"),), "black"))
    with pytest.raises(AttributeError):
        scene.background = "gray"


# --- the held-out split ---------------------------------------------------------------------


def test_about_15_percent_of_single_object_combinations_are_held_out():
    held_out = [obj for obj in all_objects() if is_held_out(obj)]
    assert len(held_out) == len(HELD_OUT_COMBINATIONS)
    assert 0.12 <= len(held_out) / len(all_objects()) <= 0.18


def test_every_part_of_a_held_out_combination_is_still_trained_in_other_combinations():
    trained = [obj for obj in all_objects() if not is_held_out(obj)]
    for colour, shape, motion in HELD_OUT_COMBINATIONS:
        assert any(obj.colour == colour and obj.shape == shape for obj in trained)
        assert any(obj.colour == colour and obj.motion == motion for obj in trained)
        assert any(obj.shape == shape and obj.motion == motion for obj in trained)
    assert {obj.colour for obj in trained} == set(COLOURS)
    assert {obj.shape for obj in trained} == set(SHAPES)
    assert {obj.motion for obj in trained} == set(MOTIONS)


def test_held_out_scenes_and_prompts_cover_each_held_out_combination_on_each_background():
    scenes = held_out_scenes()
    assert len(scenes) == len(HELD_OUT_COMBINATIONS) * len(BACKGROUNDS) == len(set(scenes))
    assert all(len(scene.objects) == 1 and is_held_out(scene.objects[0]) for scene in scenes)
    assert {(scene.objects[0].colour, scene.objects[0].shape, scene.objects[0].motion) for scene in scenes} == set(
        HELD_OUT_COMBINATIONS
    )
    assert [parse_prompt(prompt) for prompt in held_out_prompts()] == scenes
    assert held_out_scenes() == scenes  # deterministic order


def test_training_scenes_never_hold_a_held_out_object_yet_cover_every_other_one():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(3000):
        scene = sample_scene(rng)
        assert not any(is_held_out(obj) for obj in scene.objects)
        seen.update(scene.objects)
    assert seen == {obj for obj in all_objects() if not is_held_out(obj)}


def test_sampling_may_include_held_out_objects_when_asked_and_respects_max_objects():
    rng = np.random.default_rng(1)
    scenes = [sample_scene(rng, allow_held_out=True) for _ in range(1000)]
    assert any(is_held_out(obj) for scene in scenes for obj in scene.objects)
    assert {len(scene.objects) for scene in scenes} == {1, 2}
    assert {scene.background for scene in scenes} == set(BACKGROUNDS)
    assert all(len(sample_scene(rng, max_objects=1).objects) == 1 for _ in range(100))
    with pytest.raises(ValueError):
        sample_scene(rng, max_objects=3)


def test_sampling_is_deterministic_in_the_generator_state():
    first = [sample_scene(np.random.default_rng(5)) for _ in range(3)]
    assert first == [sample_scene(np.random.default_rng(5)) for _ in range(3)]


# --- the renderer ---------------------------------------------------------------------------


def test_clips_are_uint8_frames_and_deterministic_in_scene_and_seed():
    scene = two_object_scenes(1)[0]
    clip = render_clip(scene, seed=3)
    assert clip.shape == (17, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_clip(scene, seed=3))
    assert not np.array_equal(clip, render_clip(scene, seed=4))


def test_other_frame_sizes_and_lengths_render():
    scene = ToyScene((ToyObject("green", "triangle", "moves to the right"),), "gray")
    assert render_clip(scene, seed=0, width=96, height=64, num_frames=33).shape == (33, 64, 96, 3)
    assert render_clip(scene, seed=0, width=48, height=80, num_frames=1).shape == (1, 80, 48, 3)
    with pytest.raises(ValueError):
        render_clip(scene, seed=0, num_frames=0)
    with pytest.raises(ValueError):
        render_clip(scene, seed=0, width=4)


def test_render_batch_stacks_clips():
    scenes = two_object_scenes(3)
    batch = render_batch(scenes, [7, 8, 9], width=32, height=32, num_frames=5)
    assert batch.shape == (3, 5, 32, 32, 3)
    for index, scene in enumerate(scenes):
        assert np.array_equal(batch[index], render_clip(scene, seed=7 + index, width=32, height=32, num_frames=5))


@pytest.mark.parametrize(("width", "height"), [(64, 64), (96, 64), (64, 96), (40, 40)])
def test_trajectories_stay_inside_the_frame_apart_and_as_large_and_far_as_specified(width, height):
    short_side = min(width, height)
    scenes = SINGLE_OBJECT_SCENES[::7] + two_object_scenes(40, seed=width + height)
    for seed, scene in enumerate(scenes):
        trajectories = plan_trajectories(scene, seed=seed, width=width, height=height)
        boxes = [trajectory.bounds() for trajectory in trajectories]
        for trajectory, (left, top, right, bottom) in zip(trajectories, boxes):
            assert left >= 0 and top >= 0 and right <= width and bottom <= height
            size_share = trajectory.start_size / short_side
            # Two crowded objects may be drawn smaller so both paths fit.
            assert 0.15 <= size_share <= 0.30 if len(scene.objects) == 2 else 0.22 <= size_share <= 0.30
            motion = trajectory.obj.motion
            (x0, y0), (x1, y1) = trajectory.start_centre, trajectory.end_centre
            if motion in ("grows", "shrinks"):
                assert (x0, y0) == (x1, y1)
                assert trajectory.end_size / trajectory.start_size == pytest.approx(1.8 if motion == "grows" else 0.5)
            else:
                sideways = motion in ("moves to the left", "moves to the right")
                along, across, side = (x1 - x0, y1 - y0, width) if sideways else (y1 - y0, x1 - x0, height)
                sign = -1 if motion in ("moves to the left", "moves up") else 1
                assert across == 0 and 0.40 <= sign * along / side <= 0.50
                assert trajectory.end_size == trajectory.start_size
        if len(boxes) == 2:
            (a_left, a_top, a_right, a_bottom), (b_left, b_top, b_right, b_bottom) = boxes
            assert a_right < b_left or b_right < a_left or a_bottom < b_top or b_bottom < a_top


def test_rendered_objects_have_their_colour_and_their_full_area_in_every_frame():
    # Summed coverage (how far each pixel is from the background towards the object colour)
    # equals the shape's area only if no part of it is cut off by the frame edge; 4x4
    # supersampling puts edge pixels' coverage in 1/16 steps, hence the tolerance.
    area_per_size_squared = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
    for seed, scene in enumerate(SINGLE_OBJECT_SCENES[::5]):
        obj = scene.objects[0]
        for width, height in ((64, 64), (96, 64)):
            clip = render_clip(scene, seed=seed, width=width, height=height).astype(np.float64)
            colour = np.asarray(COLOURS[obj.colour], float)
            background = np.asarray(BACKGROUNDS[scene.background], float)
            assert (clip == colour).all(axis=-1).any(axis=(1, 2)).all()  # flat interior in every frame
            coverage = ((clip - background) @ (colour - background)) / ((colour - background) @ (colour - background))
            (trajectory,) = plan_trajectories(scene, seed=seed, width=width, height=height)
            for index, frame_coverage in enumerate(coverage):
                size = trajectory.at(index / (len(coverage) - 1))[2]
                assert frame_coverage.sum() == pytest.approx(area_per_size_squared[obj.shape] * size**2, rel=0.05)


def test_triangles_point_up():
    scene = ToyScene((ToyObject("white", "triangle", "grows"),), "black")
    frame = render_clip(scene, seed=0)[-1]
    widths = [np.count_nonzero(row.max(axis=-1) > 200) for row in frame]
    rows = [index for index, width in enumerate(widths) if width]
    assert widths[rows[0]] < widths[rows[-1]] / 4
    assert widths[rows[0] : rows[-1] + 1] == sorted(widths[rows[0] : rows[-1] + 1])


def test_every_colour_and_background_is_used_as_specified():
    for colour, background in product(COLOURS, BACKGROUNDS):
        clip = render_clip(ToyScene((ToyObject(colour, "square", "moves up"),), background), seed=1)
        pixels = {tuple(pixel) for pixel in clip.reshape(-1, 3)}
        assert tuple(COLOURS[colour]) in pixels and tuple(BACKGROUNDS[background]) in pixels
