"""A Unigram tokenizer built in memory for the random-weight presets (no tokenizer files can be downloaded)."""

from __future__ import annotations

import string

WORDS = (
    "the a an of in on and with at to is cat dog city night sun sea sky car red blue green "
    "man woman walks runs flies street forest rain snow light camera slow motion close up "
    "wide shot video water fire tree house mountain river bird fish robot space star moon"
).split()


def build_tokenizer(vocab_size: int, words: tuple[str, ...] | list[str] = WORDS):
    """T5's tokenizer class over a small vocabulary: whole ``words`` score above single characters.

    Ids 0, 1, 2 are <pad>, </s>, <unk>, matching the pad/eos ids UMT5 and T5 configs use.
    """
    from transformers import T5Tokenizer

    specials = ["<pad>", "</s>", "<unk>"]
    characters = ["▁", *string.ascii_lowercase, *string.ascii_uppercase, *string.digits, *".,!?'-:;()"]
    pieces: list[tuple[str, float]] = [(token, 0.0) for token in specials]
    pieces += [(char, -5.0) for char in characters]
    pieces += [("▁" + word, -1.0) for word in words]
    pieces = pieces[:vocab_size]
    filler = 0
    while len(pieces) < vocab_size:
        pieces.append((f"▁w{filler}", -8.0))
        filler += 1
    return T5Tokenizer(vocab=pieces, extra_ids=0)
