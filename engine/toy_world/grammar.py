"""The toy world's closed vocabulary: scenes, their canonical prompts, a liberal prompt parser,
random scenes for training and the held-out combinations kept back for evaluation.

A scene is one or two flat shapes, each of a colour and doing one motion, on a plain
background. Every prompt the training set uses is ``scene_to_prompt``'s canonical wording;
``parse_prompt`` also reads a few paraphrases so hand-written evaluation prompts work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

import numpy as np

# Saturated and far apart in RGB (at least ~140 from each other and from both backgrounds),
# so a detector can still tell them apart in blurry, noisy, slightly off-colour video.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (30, 200, 50),
    "blue": (40, 80, 230),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
MOTIONS: tuple[str, ...] = (
    "moves to the left",
    "moves to the right",
    "moves up",
    "moves down",
    "grows",
    "shrinks",
)
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (128, 128, 128)}
MAX_OBJECTS = 2


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    motion: str

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ValueError(f"colour: must be one of {', '.join(COLOURS)} (got {self.colour!r})")
        if self.shape not in SHAPES:
            raise ValueError(f"shape: must be one of {', '.join(SHAPES)} (got {self.shape!r})")
        if self.motion not in MOTIONS:
            raise ValueError(f"motion: must be one of {', '.join(map(repr, MOTIONS))} (got {self.motion!r})")


@dataclass(frozen=True)
class ToyScene:
    objects: tuple[ToyObject, ...]
    background: str

    def __post_init__(self):
        # A list would make the scene unhashable; take any sequence and keep a tuple.
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"objects: must hold 1 to {MAX_OBJECTS} objects (got {len(self.objects)})")
        if not all(isinstance(item, ToyObject) for item in self.objects):
            raise ValueError("objects: every item must be a ToyObject")
        colours = [item.colour for item in self.objects]
        if len(set(colours)) != len(colours):
            # The adherence detector finds objects by colour alone.
            raise ValueError(f"objects: must differ in colour (got {', '.join(colours)})")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background: must be one of {', '.join(BACKGROUNDS)} (got {self.background!r})")


def scene_to_prompt(scene: ToyScene) -> str:
    """'a red circle moves to the right and a blue square moves up on a gray background'."""
    clauses = " and ".join(f"a {item.colour} {item.shape} {item.motion}" for item in scene.objects)
    return f"{clauses} on a {scene.background} background"


# --- parsing -------------------------------------------------------------------------------

_VERBS = (
    "moves", "moving", "move", "goes", "going", "go", "slides", "sliding", "slide",
    "travels", "travelling", "traveling", "travel", "drifts", "drifting", "drift",
    "heads", "heading", "head",
)  # fmt: skip
_DIRECTION_WORDS = {
    "moves to the left": ("to the left", "towards the left", "toward the left", "left", "leftward", "leftwards"),
    "moves to the right": ("to the right", "towards the right", "toward the right", "right", "rightward", "rightwards"),
    "moves up": ("up", "upward", "upwards"),
    "moves down": ("down", "downward", "downwards"),
}
_MOTION_ONLY_PHRASES = {
    "moves up": ("rises", "rising"),
    "moves down": ("falls", "falling", "sinks", "sinking"),
    "grows": (
        "grows", "growing", "grow", "grows bigger", "grows larger", "gets bigger", "getting bigger",
        "gets larger", "getting larger", "expands", "expanding", "expand",
    ),
    "shrinks": (
        "shrinks", "shrinking", "shrink", "gets smaller", "getting smaller", "contracts", "contracting",
    ),
}  # fmt: skip
_SHAPE_WORDS = {"circle": ("circle", "disc", "disk"), "square": ("square",), "triangle": ("triangle",)}
_BACKGROUND_WORDS = {"black": ("black",), "gray": ("gray", "grey")}


def _phrase_table() -> dict[str, str]:
    """Every accepted motion phrase -> its canonical motion."""
    table = {}
    for motion, directions in _DIRECTION_WORDS.items():
        for verb, direction in product(_VERBS, directions):
            table[f"{verb} {direction}"] = motion
    for motion, phrases in _MOTION_ONLY_PHRASES.items():
        table.update(dict.fromkeys(phrases, motion))
    return table


_MOTION_PHRASES = _phrase_table()
_SHAPE_BY_WORD = {word: shape for shape, words in _SHAPE_WORDS.items() for word in words}
_BACKGROUND_BY_WORD = {word: name for name, words in _BACKGROUND_WORDS.items() for word in words}


def _alternation(words) -> str:
    # Longest first so "moves to the left" wins over a prefix of itself.
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


def _object_pattern(index: int) -> str:
    return (
        rf"(?:(?:a|an|the|one) )?(?P<colour{index}>{_alternation(COLOURS)}) "
        rf"(?P<shape{index}>{_alternation(_SHAPE_BY_WORD)}) "
        rf"(?:(?:is|that|which) )?(?P<motion{index}>{_alternation(_MOTION_PHRASES)})"
    )


# Text is normalised first (lower case, single spaces, commas as " ,"), so the pattern only
# deals in single spaces. Alternations of fixed phrases only: no nested repeats to backtrack on.
_PROMPT_PATTERN = re.compile(
    _object_pattern(1)
    + rf"(?:(?:(?: ,)? (?:and|while|as)| ,) {_object_pattern(2)})?"
    + r"(?: ,)? (?:on|against|over|with|in front of) (?:(?:a|an|the) )?"
    + rf"(?P<background>{_alternation(_BACKGROUND_BY_WORD)})(?: background| backdrop)?"
)


def _normalised(text: str) -> str:
    text = text.lower().replace(",", " , ")
    text = " ".join(text.split())
    return text.rstrip(" .!").strip()


def parse_prompt(text: str) -> ToyScene | None:
    """The scene a prompt names, or None if it is outside the grammar (never raises).

    Accepts the canonical wording in any case with any spacing and a trailing period, and
    paraphrases such as "a red circle moving left on black", "a blue square goes up against a
    grey background", "a green disc gets bigger, a white triangle falls on a black backdrop".
    The background is required: a scene without one would be a guess, not a reading.
    """
    if not isinstance(text, str):
        return None
    match = _PROMPT_PATTERN.fullmatch(_normalised(text))
    if match is None:
        return None
    objects = []
    for index in (1, 2):
        if match.group(f"colour{index}") is None:
            continue
        objects.append(
            ToyObject(
                colour=match.group(f"colour{index}"),
                shape=_SHAPE_BY_WORD[match.group(f"shape{index}")],
                motion=_MOTION_PHRASES[match.group(f"motion{index}")],
            )
        )
    try:
        return ToyScene(tuple(objects), _BACKGROUND_BY_WORD[match.group("background")])
    except ValueError:  # two objects of one colour
        return None


# --- the held-out split --------------------------------------------------------------------

# 14 of the 90 single-object combinations (15.6%), never seen in training, to measure
# compositional generalisation: each is a new triple of parts that training shows in other
# combinations. Chosen by hand so that no (colour, shape), (colour, motion) or (shape, motion)
# pair is held out more than once: every pair a held-out triple is made of still appears in
# training with some other third part, and every colour, shape and motion appears in training.
HELD_OUT_COMBINATIONS: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "circle", "moves up"),
        ("red", "square", "shrinks"),
        ("red", "triangle", "moves to the left"),
        ("green", "circle", "moves to the right"),
        ("green", "square", "moves down"),
        ("green", "triangle", "grows"),
        ("blue", "circle", "shrinks"),
        ("blue", "square", "moves to the left"),
        ("blue", "triangle", "moves up"),
        ("yellow", "circle", "grows"),
        ("yellow", "square", "moves to the right"),
        ("yellow", "triangle", "moves down"),
        ("white", "circle", "moves to the left"),
        ("white", "triangle", "moves to the right"),
    }
)


def is_held_out(obj: ToyObject) -> bool:
    return (obj.colour, obj.shape, obj.motion) in HELD_OUT_COMBINATIONS


def all_objects() -> list[ToyObject]:
    """Every single-object combination, in vocabulary order."""
    return [ToyObject(colour, shape, motion) for colour, shape, motion in product(COLOURS, SHAPES, MOTIONS)]


def held_out_scenes() -> list[ToyScene]:
    """Each held-out combination alone on each background, in vocabulary order."""
    return [
        ToyScene((obj,), background) for obj in all_objects() if is_held_out(obj) for background in BACKGROUNDS
    ]


def held_out_prompts() -> list[str]:
    return [scene_to_prompt(scene) for scene in held_out_scenes()]


def sample_scene(rng: np.random.Generator, *, max_objects: int = 2, allow_held_out: bool = False) -> ToyScene:
    """A uniformly random scene of 1 to ``max_objects`` objects of different colours."""
    if max_objects not in range(1, MAX_OBJECTS + 1):
        raise ValueError(f"max_objects: must be 1 to {MAX_OBJECTS} (got {max_objects!r})")
    candidates = [obj for obj in all_objects() if allow_held_out or not is_held_out(obj)]
    objects: list[ToyObject] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        free = [obj for obj in candidates if obj.colour not in {chosen.colour for chosen in objects}]
        objects.append(free[int(rng.integers(len(free)))])
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    return ToyScene(tuple(objects), background)
