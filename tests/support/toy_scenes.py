"""Toy-world scenes the tests draw: random two-object scenes, held-out combinations allowed."""

from __future__ import annotations

import numpy as np

from engine.toy_world.grammar import ToyScene, sample_scene


def two_object_scenes(count: int, seed: int = 0) -> list[ToyScene]:
    rng = np.random.default_rng(seed)
    scenes = []
    while len(scenes) < count:
        scene = sample_scene(rng, allow_held_out=True)
        if len(scene.objects) == 2:
            scenes.append(scene)
    return scenes
