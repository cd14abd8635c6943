"""Does a clip show its toy-world prompt? A model-free detector that reads the objects' colours,
shapes and motions off the pixels and compares them with the prompt's scene.

It has to work on generated video, not only on clean renders, so every step is chosen to
survive blurry edges, slightly off colours, low-level noise and stray pixels:

1. Each pixel goes to the nearest colour of the palette (the five object colours and the
   clip's own background, measured from its border), or to "unknown" when it is far from all
   of them; blurred edges, halfway between an object and the background, end up unknown.
2. Per frame and object colour, the largest 4-connected blob of that colour is the object;
   stray pixels and specks form small blobs of their own and are ignored, and a blob below a
   minimum size counts as absent.
3. Motion comes from the blobs' centroids and areas over the frames, as a robust (Theil-Sen)
   slope extrapolated over the whole clip, so a few bad frames cannot flip the answer; the
   named motion with the most evidence, relative to how much the renderer moves or scales an
   object, wins if it clears a threshold, else the motion is "none".
4. Shape comes from the frames where the blob is biggest, from where its pixels lie in its
   bounding box: how many in the top half (triangles point up: ~0.25; circles and squares
   ~0.5) and whether the box's corners are filled (squares) or empty (circles).

Each threshold's constant says where it comes from: the renderer's geometry for motion, and
feature values measured on clean and degraded renders for colour and shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from engine.frame_array import checked_frames
from engine.toy_world.grammar import BACKGROUNDS, COLOURS, MOTIONS, ToyObject, ToyScene
from engine.toy_world.render import END_SCALE, TRAVEL_RANGE

# Euclidean RGB distance (0-255 units) within which a pixel can take a palette colour. The
# closest palette pair (green and gray) is ~140 apart, so 60 leaves 50/50 blends of an
# object and the background unknown while allowing ~35 of colour error plus noise.
MAX_COLOUR_DISTANCE = 60.0
# A blob smaller than this share of the frame (and than MIN_BLOB_PIXELS) is a speck, not an
# object: the smallest rendered object (22% of the short side, shrunk to half) covers ~0.6%.
MIN_BLOB_SHARE = 0.0015
MIN_BLOB_PIXELS = 4
# An object must be seen in at least this share of frames to count as present.
MIN_PRESENT_SHARE = 0.5
# The renderer's motions at full strength: the middle of its travel range (share of the frame
# side) and the log area ratios of its end scales.
FULL_TRAVEL = sum(TRAVEL_RANGE) / 2
FULL_LOG_AREA_CHANGE = {motion: 2 * math.log(scale) for motion, scale in END_SCALE.items()}
# A motion is named when its evidence reaches this share of full strength: a translation of
# ~16% of the frame or an area change of x1.5 / x0.62; a still object stays well below.
MIN_MOTION_EVIDENCE = 0.35
# Shape thresholds (features in _measure_blob), set from clean and degraded renders rather
# than halfway between ideal values, because blur pushes features one way only. The share of
# a blob's pixels in its bounding box's top half is 0.25 for a clean triangle, up to ~0.37
# blurred (radius 1.5 px at 64x64), and 0.47-0.53 for discs and squares, blurred or not.
TRIANGLE_MAX_TOP_SHARE = 0.42
# The box's corners are empty for a disc, blurred or not (it never reaches them), and full
# for a square; blur rounds a square's corners down to ~0.3 full.
SQUARE_MIN_CORNER_FILL = 0.15
# Shape is read where the object is biggest, so pixelation and blurred edges matter least.
SHAPE_FRAMES_MIN_AREA_SHARE = 0.75
# Pixels classified at a time: bounds the memory of a long clip's [pixels, palette] distances.
CLASSIFY_CHUNK_PIXELS = 1 << 20

_TRANSLATIONS = {
    "moves to the left": (-1, 0),
    "moves to the right": (1, 0),
    "moves up": (0, -1),
    "moves down": (0, 1),
}
_OBJECT_COLOURS = tuple(COLOURS)


@dataclass(frozen=True)
class Track:
    """One object colour's largest blob in every frame where it was found."""

    colour: str
    frame_size: tuple[int, int]  # (width, height)
    num_frames: int
    frame_indices: tuple[int, ...]
    centroids: tuple[tuple[float, float], ...]  # (x, y) in pixels
    areas: tuple[int, ...]  # pixels
    # Shape features of the blob in its bounding box (see _measure_blob).
    top_shares: tuple[float, ...]
    corner_fills: tuple[float, ...]

    @property
    def present_share(self) -> float:
        return len(self.frame_indices) / self.num_frames

    @property
    def motion(self) -> str:
        return classify_motion(self)

    @property
    def shape(self) -> str:
        return classify_shape(self)


@dataclass(frozen=True)
class ObjectVerdict:
    expected: ToyObject
    found: bool
    detected_shape: str | None
    detected_motion: str | None  # one of MOTIONS or "none"; None when not found
    colour_correct: bool
    shape_correct: bool
    motion_correct: bool


@dataclass(frozen=True)
class AdherenceVerdict:
    objects: tuple[ObjectVerdict, ...]
    background_correct: bool

    @property
    def colour_and_motion(self) -> bool:
        """The headline: every named colour is there, moving as named."""
        return all(item.colour_correct and item.motion_correct for item in self.objects)

    @property
    def full(self) -> bool:
        return self.background_correct and all(
            item.colour_correct and item.shape_correct and item.motion_correct for item in self.objects
        )


def judge_clip(frames: np.ndarray, scene: ToyScene) -> AdherenceVerdict:
    """How far uint8 [F, H, W, 3] ``frames`` show ``scene``: per object and for the background."""
    frames = checked_frames(frames)
    background = measure_background(frames)
    tracks = detect_tracks(frames, background=background)
    verdicts = []
    for expected in scene.objects:
        track = tracks.get(expected.colour)
        found = track is not None and track.present_share >= MIN_PRESENT_SHARE
        shape = track.shape if found else None
        motion = track.motion if found else None
        verdicts.append(
            ObjectVerdict(
                expected=expected,
                found=found,
                detected_shape=shape,
                detected_motion=motion,
                colour_correct=found,
                shape_correct=shape == expected.shape,
                motion_correct=motion == expected.motion,
            )
        )
    return AdherenceVerdict(tuple(verdicts), background_name(background) == scene.background)


def summarize(verdicts: Iterable[AdherenceVerdict]) -> dict[str, float]:
    """Share of clips right on each count; per-object parts count a clip right only when every
    object in it is. Empty input gives all zeros."""
    verdicts = list(verdicts)
    parts = {
        "colour_and_motion": lambda verdict: verdict.colour_and_motion,
        "full": lambda verdict: verdict.full,
        "colour": lambda verdict: all(item.colour_correct for item in verdict.objects),
        "shape": lambda verdict: all(item.shape_correct for item in verdict.objects),
        "motion": lambda verdict: all(item.motion_correct for item in verdict.objects),
        "background": lambda verdict: verdict.background_correct,
    }
    if not verdicts:
        return dict.fromkeys(parts, 0.0)
    return {name: sum(map(is_right, verdicts)) / len(verdicts) for name, is_right in parts.items()}


def measure_background(frames: np.ndarray) -> tuple[float, float, float]:
    """The clip's background colour: the median of its border pixels over all frames (objects
    touch the border at most briefly, so they barely move the median)."""
    edges = (frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1])
    border = np.concatenate([edge.reshape(-1, 3) for edge in edges])
    return tuple(float(value) for value in np.median(border, axis=0))


def background_name(colour: tuple[float, float, float]) -> str | None:
    """The named background ``colour`` is, or None if it is none of them."""
    distances = {name: _distance(colour, rgb) for name, rgb in BACKGROUNDS.items()}
    name = min(distances, key=distances.get)
    return name if distances[name] <= MAX_COLOUR_DISTANCE else None


def detect_tracks(frames: np.ndarray, *, background: tuple[float, float, float] | None = None) -> dict[str, Track]:
    """Object colour -> its track, for every colour found in at least one frame.

    ``background`` is the clip's background colour; measured from the border if not given.
    """
    frames = checked_frames(frames)
    if background is None:
        background = measure_background(frames)
    num_frames, height, width = frames.shape[:3]
    classes = classify_pixels(frames, background)
    labels = label_components(classes)
    min_area = max(MIN_BLOB_PIXELS, MIN_BLOB_SHARE * height * width)

    flat_labels = labels.reshape(-1)
    in_object = flat_labels >= 0
    sizes = np.bincount(flat_labels[in_object], minlength=flat_labels.size)
    # A component's label is its first pixel's flat index, so that pixel's class is the
    # component's colour, and its frame is label // (height * width).
    flat_classes = classes.reshape(-1)
    tracks = {}
    for colour_index, colour in enumerate(_OBJECT_COLOURS):
        sizes_of_colour = np.where(flat_classes == colour_index, sizes, 0).reshape(num_frames, height * width)
        largest = sizes_of_colour.argmax(axis=1)
        frame_indices = np.flatnonzero(sizes_of_colour[np.arange(num_frames), largest] >= min_area).tolist()
        if not frame_indices:
            continue
        measurements = [
            _measure_blob(labels[frame_index] == frame_index * height * width + largest[frame_index])
            for frame_index in frame_indices
        ]
        tracks[colour] = Track(
            colour=colour,
            frame_size=(width, height),
            num_frames=num_frames,
            frame_indices=tuple(frame_indices),
            centroids=tuple(measurement.centroid for measurement in measurements),
            areas=tuple(measurement.area for measurement in measurements),
            top_shares=tuple(measurement.top_share for measurement in measurements),
            corner_fills=tuple(measurement.corner_fill for measurement in measurements),
        )
    return tracks


def classify_pixels(frames: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """int8 [F, H, W]: the index of the nearest object colour (in COLOURS order), or -1 for the
    background and for pixels farther than MAX_COLOUR_DISTANCE from every palette colour."""
    # The background first: argmin takes the first of equals, so a clip whose background is
    # an object colour shows no object rather than one filling the frame.
    palette = np.asarray([background, *COLOURS.values()], np.float32)
    squared_norms = (palette * palette).sum(axis=1)
    pixels = frames.reshape(-1, 3)
    classes = np.empty(len(pixels), np.int8)
    for start in range(0, len(pixels), CLASSIFY_CHUNK_PIXELS):
        chunk = pixels[start : start + CLASSIFY_CHUNK_PIXELS].astype(np.float32)
        # |p - c|^2 = |p|^2 - 2 p.c + |c|^2: one matrix product for the whole chunk.
        distances = (chunk * chunk).sum(axis=1, keepdims=True) - 2 * chunk @ palette.T + squared_norms
        nearest = distances.argmin(axis=1)
        close = distances[np.arange(len(chunk)), nearest] <= MAX_COLOUR_DISTANCE**2
        # Palette index 0, the background, becomes -1 like unknown pixels.
        classes[start : start + len(chunk)] = np.where(close, nearest - 1, -1)
    return classes.reshape(frames.shape[:3])


def label_components(classes: np.ndarray) -> np.ndarray:
    """int64 [F, H, W]: for each pixel of an object colour, the index into the flattened clip of
    the first pixel of its 4-connected same-colour component (components never span frames);
    -1 elsewhere.

    Minimum-label propagation with pointer jumping, vectorised over the whole clip: each pass
    takes the smallest label among same-colour neighbours, then follows labels to their
    labels, until nothing changes (a few dozen passes for toy-sized blobs).
    """
    sentinel = classes.size
    labels = np.where(classes >= 0, np.arange(classes.size).reshape(classes.shape), sentinel)
    same_as_right = (classes[:, :, 1:] == classes[:, :, :-1]) & (classes[:, :, 1:] >= 0)
    same_as_below = (classes[:, 1:, :] == classes[:, :-1, :]) & (classes[:, 1:, :] >= 0)
    while True:
        updated = labels.copy()
        np.minimum(updated[:, :, :-1], np.where(same_as_right, labels[:, :, 1:], sentinel), out=updated[:, :, :-1])
        np.minimum(updated[:, :, 1:], np.where(same_as_right, labels[:, :, :-1], sentinel), out=updated[:, :, 1:])
        np.minimum(updated[:, :-1, :], np.where(same_as_below, labels[:, 1:, :], sentinel), out=updated[:, :-1, :])
        np.minimum(updated[:, 1:, :], np.where(same_as_below, labels[:, :-1, :], sentinel), out=updated[:, 1:, :])
        flat = updated.reshape(-1)
        labelled = flat < sentinel
        # Labels only ever decrease, so a label's own label is in the same component and no larger.
        flat[labelled] = flat[flat[labelled]]
        if np.array_equal(updated, labels):
            return np.where(labels < sentinel, labels, -1)
        labels = updated


class _BlobMeasurement(NamedTuple):
    centroid: tuple[float, float]
    area: int
    top_share: float
    corner_fill: float


def _measure_blob(mask: np.ndarray) -> _BlobMeasurement:
    """Where one blob (boolean [H, W] mask) is, how big, and what its shape looks like in its
    bounding box: the share of its pixels in the box's top half (0.5 for a disc or a square,
    0.25 for an upward triangle), and how full the box's four corner triangles beyond
    |u| + |v| = 1.5 are, in box coordinates scaled to [-1, 1] (a square fills them, a disc,
    |u| + |v| <= 1.41, leaves them empty; an upward triangle fills a third)."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right]
    u = (np.arange(right - left) + 0.5) / (right - left) * 2 - 1
    v = (np.arange(bottom - top) + 0.5) / (bottom - top) * 2 - 1
    corners = np.abs(u)[None, :] + np.abs(v)[:, None] > 1.5
    # The blob's mean, not a median: stray pixels are already left out by taking the largest
    # blob, and the mean moves smoothly with sub-pixel motion.
    return _BlobMeasurement(
        centroid=(float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
        area=len(xs),
        # A row on the middle line (odd heights) counts half to each half.
        top_share=(np.count_nonzero(box[v < 0]) + 0.5 * np.count_nonzero(box[v == 0])) / len(xs),
        corner_fill=np.count_nonzero(box & corners) / max(np.count_nonzero(corners), 1),
    )


def classify_motion(track: Track) -> str:
    """The named motion the track shows most clearly, or "none" if no motion clears
    MIN_MOTION_EVIDENCE."""
    if len(track.frame_indices) < 2:
        return "none"
    times = np.asarray(track.frame_indices, np.float64)
    centroids = np.asarray(track.centroids, np.float64)
    span = track.num_frames - 1
    width, height = track.frame_size
    shift_x = _robust_slope(times, centroids[:, 0]) * span / width
    shift_y = _robust_slope(times, centroids[:, 1]) * span / height
    log_area_change = _robust_slope(times, np.log(np.asarray(track.areas, np.float64))) * span
    evidence = {
        motion: (direction_x * shift_x + direction_y * shift_y) / FULL_TRAVEL
        for motion, (direction_x, direction_y) in _TRANSLATIONS.items()
    }
    evidence.update(
        {motion: log_area_change / full_change for motion, full_change in FULL_LOG_AREA_CHANGE.items()}
    )
    strongest = max(MOTIONS, key=evidence.__getitem__)
    return strongest if evidence[strongest] >= MIN_MOTION_EVIDENCE else "none"


def classify_shape(track: Track) -> str:
    """The blob's shape, read where it is biggest: a triangle if its pixels sit low in its
    bounding box, else a square if the box's corners are filled, else a circle."""
    areas = np.asarray(track.areas)
    biggest = areas >= SHAPE_FRAMES_MIN_AREA_SHARE * areas.max()
    if np.median(np.asarray(track.top_shares)[biggest]) <= TRIANGLE_MAX_TOP_SHARE:
        return "triangle"
    return "square" if np.median(np.asarray(track.corner_fills)[biggest]) >= SQUARE_MIN_CORNER_FILL else "circle"


def _robust_slope(times: np.ndarray, values: np.ndarray) -> float:
    """Theil-Sen: the median of the slopes between every pair of points."""
    first, second = np.triu_indices(len(times), k=1)
    return float(np.median((values[second] - values[first]) / (times[second] - times[first])))


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
