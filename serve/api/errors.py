"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.jobs.store import JobStoreUnavailable
from serve.service_errors import InsufficientStorage, InvalidField, NotFound, NotReady, Overloaded, ServiceError

logger = logging.getLogger(__name__)

# How long a client should wait after the job store was unreachable: about what a Redis
# restart (or a failover) takes; redis-py has already retried for a few seconds by then.
STORE_RETRY_AFTER_SECONDS = 2

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error", 409: "invalid_request_error",
          413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error", 507: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"), "param": param,
                      "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


# The service's refusals, as HTTP statuses: the one place that knows both.
_SERVICE_STATUSES = {NotFound: 404, InvalidField: 400, NotReady: 409, Overloaded: 429, InsufficientStorage: 507}


def service_error_response(error: ServiceError) -> JSONResponse:
    status = next((code for kind, code in _SERVICE_STATUSES.items() if isinstance(error, kind)), 400)
    retry_after = getattr(error, "retry_after_seconds", None)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return error_response(status, error.message, error.param, error.code, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError):
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(ServiceError)
    async def _service_error(_: Request, error: ServiceError):
        return service_error_response(error)

    @app.exception_handler(JobStoreUnavailable)
    async def _store_unavailable(request: Request, error: JobStoreUnavailable):
        logger.warning("job store unavailable on %s %s: %s", request.method, request.url.path, error)
        return error_response(503, "the job store is unavailable; retry shortly", None,
                              "store_unavailable", {"Retry-After": str(STORE_RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, error: RequestValidationError):
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        param = ".".join(location) or None
        return error_response(400, f"{param}: {first.get('msg')}", param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return error_response(error.status_code, str(error.detail), None, code, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception):
        # The text of an unexpected error may hold paths, hosts or request data: it goes to the log only.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
        return error_response(500, "internal server error", None, "internal_error")
