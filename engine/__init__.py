"""videoserve engine: model registry, stage classes and the Wan step protocol.

Nothing in this package imports Ray or FastAPI; a test enforces it. Serving code in
``serve/`` wraps these classes.
"""
