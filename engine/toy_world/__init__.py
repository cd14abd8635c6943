"""A toy world of flat coloured shapes moving on plain backgrounds: a closed prompt grammar,
a procedural clip renderer and a held-out split, for training and judging a small text-to-video
model on CPU where every prompt's right answer is known."""
