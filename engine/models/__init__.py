"""What a model is: its spec and limits, the registry of names and presets, where its files are, the built-in random presets."""
