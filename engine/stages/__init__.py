"""Stage classes: each owns its model(s) and can live in its own process."""
