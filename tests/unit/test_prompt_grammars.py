"""The note a prompt gets from a model trained on a closed grammar (the toy world model)."""

from __future__ import annotations

import pytest

from engine.prompt_grammars import TOY_WORLD, prompt_note


def test_a_canonical_prompt_gets_no_note():
    assert prompt_note(TOY_WORLD, "a red circle moves to the right on a black background") is None


def test_a_paraphrase_the_grammar_reads_gets_the_wording_the_model_was_trained_on():
    note = prompt_note(TOY_WORLD, "A red disc goes right against a black backdrop.")
    assert note is not None and "'a red circle moves to the right on a black background'" in note


@pytest.mark.parametrize("prompt", ["a cat surfing a wave at sunset", "", "a red circle moves up"])
def test_a_prompt_outside_the_grammar_gets_a_note_not_an_error(prompt):
    note = prompt_note(TOY_WORLD, prompt)
    assert note is not None and "only knows its grammar" in note


def test_a_model_without_a_grammar_never_gets_a_note():
    assert prompt_note(None, "anything at all") is None


def test_an_unknown_grammar_is_refused_by_name():
    with pytest.raises(ValueError, match="prompt_grammar"):
        prompt_note("klingon", "a prompt")
