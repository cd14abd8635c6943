"""Thin Ray Serve deployment classes over the engine stages.

They are plain classes: ``serve/app_builder.py`` wraps each with ``serve.deployment`` and
binds it to the validated AppConfig, so tests can also construct them without Ray.
"""
