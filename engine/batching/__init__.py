"""Step-level continuous batching: the pure scheduler, the one-step engine, and the engine on its own step thread."""
