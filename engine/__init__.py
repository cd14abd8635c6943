"""videoserve engine: model registry, model families (Wan, LTX-Video), stage classes and the
step protocol.

Nothing in this package imports Ray or FastAPI; a test enforces it. Serving code in
``serve/`` wraps these classes.
"""
