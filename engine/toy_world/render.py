"""Procedural clips of toy-world scenes: flat shapes with anti-aliased edges on a plain background.

Everything is in pixels of the output frame and proportional to its size, so any frame size
works: an object's base size is 22-30% of the frame's short side, a translation covers 40-50%
of the frame side it moves along at constant speed, "grows" scales linearly to 1.8x and
"shrinks" to 0.5x. Where it starts, how big it is and how far it goes come from the seed, and
are drawn so that the object stays whole inside the frame all clip long and two objects'
paths never overlap (so one never hides or touches the other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.toy_world.grammar import BACKGROUNDS, COLOURS, ToyObject, ToyScene

BASE_SIZE_RANGE = (0.22, 0.30)  # of the frame's short side
TRAVEL_RANGE = (0.40, 0.50)  # of the frame's width (left/right) or height (up/down)
END_SCALE = {"grows": 1.8, "shrinks": 0.5}
# Each pixel is the mean of SUPERSAMPLING x SUPERSAMPLING point samples: smooth edges that a
# video model can learn, without the blur of a filter.
SUPERSAMPLING = 4
# Two objects' whole-clip bounding boxes stay this far apart (of the short side), so blurred
# edges in generated video never merge them.
SEPARATION = 0.06
PLACEMENT_TRIES = 256
# Some pairs seldom fit at full size (one moving sideways and one moving up or down need one
# travel, both sizes and the gap along a side: 0.90-1.16 of it); when no try fits, the size
# range shrinks by this factor and the draw repeats. Travel stays as named: it is what the
# prompt is about.
CROWDED_SHRINK = 0.9

_DIRECTION = {
    "moves to the left": (-1.0, 0.0),
    "moves to the right": (1.0, 0.0),
    "moves up": (0.0, -1.0),
    "moves down": (0.0, 1.0),
}


@dataclass(frozen=True)
class ObjectTrajectory:
    """Where one object's shape is centred and how big it is (side / diameter, in pixels) at
    the clip's first and last frames; both change linearly in between."""

    obj: ToyObject
    start_centre: tuple[float, float]
    end_centre: tuple[float, float]
    start_size: float
    end_size: float

    def at(self, fraction: float) -> tuple[float, float, float]:
        """(centre x, centre y, size) a ``fraction`` (0..1) of the way through the clip."""
        (x0, y0), (x1, y1) = self.start_centre, self.end_centre
        return (
            x0 + (x1 - x0) * fraction,
            y0 + (y1 - y0) * fraction,
            self.start_size + (self.end_size - self.start_size) * fraction,
        )

    def bounds(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) covering the object over the whole clip; motion is linear,
        so the first and last frames bound it."""
        boxes = [_box(*self.at(fraction)) for fraction in (0.0, 1.0)]
        return (
            min(box[0] for box in boxes),
            min(box[1] for box in boxes),
            max(box[2] for box in boxes),
            max(box[3] for box in boxes),
        )


def _box(cx: float, cy: float, size: float) -> tuple[float, float, float, float]:
    half = size / 2
    return cx - half, cy - half, cx + half, cy + half


def plan_trajectories(scene: ToyScene, *, seed: int, width: int, height: int) -> tuple[ObjectTrajectory, ...]:
    """Each object's trajectory, drawn from ``seed``: inside the frame and apart from each other."""
    _check_size(width, height)
    rng = np.random.default_rng(seed)
    short_side = min(width, height)
    size_scale = 1.0
    while True:
        # Draw a whole batch at once so the result depends on the seed alone; the first
        # candidate placement that fits wins.
        draws = rng.random((PLACEMENT_TRIES, len(scene.objects), 4))
        for attempt in draws:
            trajectories = [
                _trajectory(obj, draw, width, height, size_scale) for obj, draw in zip(scene.objects, attempt)
            ]
            if _apart(trajectories, SEPARATION * short_side):
                return tuple(trajectories)
        size_scale *= CROWDED_SHRINK


def _trajectory(obj: ToyObject, draw: np.ndarray, width: int, height: int, size_scale: float) -> ObjectTrajectory:
    short_side = min(width, height)
    size = short_side * size_scale * _between(BASE_SIZE_RANGE, draw[0])
    end_size = size * END_SCALE.get(obj.motion, 1.0)
    direction_x, direction_y = _DIRECTION.get(obj.motion, (0.0, 0.0))
    travel = _between(TRAVEL_RANGE, draw[1])
    shift_x, shift_y = direction_x * travel * width, direction_y * travel * height
    half = max(size, end_size) / 2
    # The start is uniform over every position that keeps the object whole all clip long.
    start_x = _between((half - min(shift_x, 0.0), width - half - max(shift_x, 0.0)), draw[2])
    start_y = _between((half - min(shift_y, 0.0), height - half - max(shift_y, 0.0)), draw[3])
    return ObjectTrajectory(
        obj=obj,
        start_centre=(start_x, start_y),
        end_centre=(start_x + shift_x, start_y + shift_y),
        start_size=size,
        end_size=end_size,
    )


def _between(bounds: tuple[float, float], unit: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * unit)


def _apart(trajectories: Sequence[ObjectTrajectory], margin: float) -> bool:
    boxes = [trajectory.bounds() for trajectory in trajectories]
    for index, a in enumerate(boxes):
        for b in boxes[index + 1 :]:
            separated_x = a[2] + margin <= b[0] or b[2] + margin <= a[0]
            separated_y = a[3] + margin <= b[1] or b[3] + margin <= a[1]
            if not (separated_x or separated_y):
                return False
    return True


def render_clip(scene: ToyScene, *, seed: int, width: int = 64, height: int = 64, num_frames: int = 17) -> np.ndarray:
    """The scene as uint8 [num_frames, height, width, 3]; the same arguments give the same clip."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames: must be a positive integer (got {num_frames!r})")
    trajectories = plan_trajectories(scene, seed=seed, width=width, height=height)
    clip = np.empty((num_frames, height, width, 3), np.float32)
    clip[:] = np.asarray(BACKGROUNDS[scene.background], np.float32)
    for frame_index in range(num_frames):
        fraction = frame_index / (num_frames - 1) if num_frames > 1 else 0.0
        for trajectory in trajectories:
            _paint(clip[frame_index], trajectory.obj, *trajectory.at(fraction))
    return np.rint(clip).astype(np.uint8)


def render_batch(
    scenes: Sequence[ToyScene], seeds: Sequence[int], *, width: int = 64, height: int = 64, num_frames: int = 17
) -> np.ndarray:
    """``render_clip`` of each (scene, seed) pair, stacked: uint8 [B, F, H, W, 3]."""
    if len(scenes) != len(seeds):
        raise ValueError(f"seeds: need one per scene ({len(scenes)} scenes, {len(seeds)} seeds)")
    return np.stack(
        [
            render_clip(scene, seed=seed, width=width, height=height, num_frames=num_frames)
            for scene, seed in zip(scenes, seeds, strict=True)
        ]
    )


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        # Below 8 px an object would be a pixel or two: nothing to learn or detect.
        if isinstance(value, bool) or not isinstance(value, int) or value < 8:
            raise ValueError(f"{name}: must be an integer of at least 8 (got {value!r})")


def _paint(frame: np.ndarray, obj: ToyObject, cx: float, cy: float, size: float) -> None:
    """Blend one shape into ``frame`` (float [H, W, 3]) by its per-pixel coverage."""
    height, width = frame.shape[:2]
    left, top, right, bottom = _box(cx, cy, size)
    x0, y0 = max(int(np.floor(left)), 0), max(int(np.floor(top)), 0)
    x1, y1 = min(int(np.ceil(right)), width), min(int(np.ceil(bottom)), height)
    if x0 >= x1 or y0 >= y1:
        return
    offsets = (np.arange(SUPERSAMPLING, dtype=np.float32) + 0.5) / SUPERSAMPLING
    xs = (np.arange(x0, x1, dtype=np.float32)[:, None] + offsets).reshape(-1) - cx
    ys = (np.arange(y0, y1, dtype=np.float32)[:, None] + offsets).reshape(-1) - cy
    inside = _inside(obj.shape, xs[None, :], ys[:, None], size / 2)
    coverage = inside.reshape(y1 - y0, SUPERSAMPLING, x1 - x0, SUPERSAMPLING).mean(axis=(1, 3), dtype=np.float32)
    region = frame[y0:y1, x0:x1]
    colour = np.asarray(COLOURS[obj.colour], np.float32)
    region += coverage[..., None] * (colour - region)


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, half: float) -> np.ndarray:
    """Whether each sample point, relative to the shape's centre, falls inside it."""
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Isosceles, pointing up: apex at the top centre, base along the bottom, as wide as tall,
    # so its half-width grows from 0 at the apex to ``half`` at the base.
    return (dy >= -half) & (dy <= half) & (np.abs(dx) <= (dy + half) / 2)
