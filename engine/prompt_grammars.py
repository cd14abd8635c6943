"""Closed prompt languages that some models were trained on, and the note a prompt outside one gets.

The toy world model (``toy``) was trained on the canonical wording of its grammar only
("a red circle moves to the right on a black background"): anything else still generates
(never an error) but means little to it, and the request says so; a paraphrase the grammar
reads gets the canonical wording to use instead.
"""

from __future__ import annotations

from engine.toy_world.grammar import parse_prompt, scene_to_prompt

TOY_WORLD = "toy_world"
TOY_WORLD_FORM = "'a <colour> <shape> <motion> on a <background> background'"


def prompt_note(grammar: str | None, prompt: str) -> str | None:
    """A sentence for the client when ``prompt`` is not in ``grammar``'s trained wording; None when it is
    (or the model has no grammar)."""
    if grammar is None:
        return None
    if grammar != TOY_WORLD:
        raise ValueError(f"prompt_grammar: unknown grammar {grammar!r} (known: {TOY_WORLD!r})")
    scene = parse_prompt(prompt)
    if scene is None:
        return (f"the toy model only knows its grammar, {TOY_WORLD_FORM} (README, 'The toy world'); "
                "this prompt is outside it, so the video will not follow it")
    canonical = scene_to_prompt(scene)
    if prompt.strip() != canonical:
        return f"the toy model was trained on the exact wording {canonical!r}; use it for the best result"
    return None
