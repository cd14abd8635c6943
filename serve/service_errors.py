"""What the video service refuses, in its own terms; serve/api/errors.py maps each to HTTP.

The service (and everything below the API) raises these; only the API layer knows
status codes and OpenAI's error shape.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal the client can act on: ``param`` names the field at fault, ``code`` the reason."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class NotFound(ServiceError):
    """No such video (or model, or variant of a video)."""


class InvalidField(ServiceError):
    """A field's value is not acceptable."""


class NotReady(ServiceError):
    """The video exists but is not in a state that allows this yet."""


class Overloaded(ServiceError):
    """Too much work is queued; ``retry_after_seconds`` says when to try again."""

    def __init__(self, message: str, *, retry_after_seconds: int, code: str | None = None):
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds


class InsufficientStorage(ServiceError):
    """The server's disk is full: nothing was kept; ``retry_after_seconds`` says when to try again."""

    def __init__(self, message: str, *, retry_after_seconds: int, code: str = "insufficient_storage"):
        super().__init__(message, code=code)
        self.retry_after_seconds = retry_after_seconds
