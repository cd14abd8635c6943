"""FastAPI routes. The VideoService behind them is set on ``app.state.service`` at start-up."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.api.api_keys import ApiKeyMiddleware, ApiKeys, request_tenant
from serve.api.rate_limit import RateLimitMiddleware, TenantRateLimiter
from serve.api.create_request import (
    create_from_fields,
    create_video_request_body,
    parse_create_fields,
    read_create_body,
)
from serve.api.errors import APIError, install_error_handlers
from serve.api.remix_request import read_remix_fields
from serve.artifact_store import VARIANT_MEDIA_TYPES
from serve.jobs.store import TERMINAL_STATUSES
from serve.jobs.updates import FALLBACK_POLL_SECONDS
from serve.video_service import VideoService

EVENT_STREAM_MAX_SECONDS = 3600

# OpenAI's Videos API routes this server does not implement, and the feature each one is: they
# answer a 404 that names it (not a bare one), before /v1/videos/{video_id} can take them for ids.
UNSUPPORTED_ROUTES = (
    ("/v1/videos/edits", "edits"),
    ("/v1/videos/extensions", "extensions"),
    ("/v1/videos/{video_id}/edits", "edits"),
    ("/v1/videos/{video_id}/extensions", "extensions"),
    ("/v1/videos/characters", "characters"),
    ("/v1/videos/characters/{rest:path}", "characters"),
)
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _service(request: Request) -> VideoService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError(503, "the server is starting", code="starting", headers={"Retry-After": "2"})
    return service


def create_api(api_keys: ApiKeys | None = None, admin_keys: ApiKeys | None = None,
               rate_limiter: TenantRateLimiter | None = None) -> FastAPI:
    """The app; with ``api_keys``, /v1/* answers 401 unless the request carries one of them, and
    each key is a tenant that sees only its own videos (``admin_keys`` see all)."""
    api = FastAPI(title="videoserve", version="0.1.0")
    install_error_handlers(api)
    # Added before count_requests, so they run inside it and refused requests are counted too;
    # the rate limit inside the key check, which names the tenant it counts against.
    if rate_limiter is not None:
        api.add_middleware(RateLimitMiddleware, limiter=rate_limiter)
    if api_keys is not None:
        api.add_middleware(ApiKeyMiddleware, api_keys=api_keys, admin_keys=admin_keys)

    @api.middleware("http")
    async def count_requests(request: Request, call_next):
        response = await call_next(request)
        service = getattr(request.app.state, "service", None)
        route = request.scope.get("route")
        if service is not None:
            service.metrics.http_requests.labels(
                request.method, getattr(route, "path", "unmatched"), str(response.status_code)
            ).inc()
        return response

    # The body is read by hand (JSON or a form, size-limited as it streams), so its schema is declared here.
    @api.post("/v1/videos", openapi_extra={"requestBody": create_video_request_body()})
    async def create_video(request: Request):
        service = _service(request)
        data, image = await read_create_body(request, service.config.api.max_request_bytes)
        video = await create_from_fields(service, parse_create_fields(data), image, request_tenant(request.scope))
        return JSONResponse(video.model_dump(mode="json"), headers=_poll_header(service))

    @api.get("/v1/videos")
    async def list_videos(
        request: Request,
        after: str | None = None,
        limit: int = Query(20, ge=0, le=100),
        order: Literal["asc", "desc"] = "desc",
    ):
        videos, has_more = await _service(request).list(after, limit, order, request_tenant(request.scope))
        return {
            "object": "list",
            "data": [video.model_dump(mode="json") for video in videos],
            "first_id": videos[0].id if videos else None,
            "last_id": videos[-1].id if videos else None,
            "has_more": has_more,
        }

    for path, feature in UNSUPPORTED_ROUTES:
        api.add_api_route(path, _unsupported(feature), methods=ALL_METHODS, include_in_schema=False)

    @api.post("/v1/videos/{video_id}/remix")
    async def remix_video(request: Request, video_id: str):
        service = _service(request)
        fields = await read_remix_fields(request, service.config.api.max_request_bytes)
        video = await service.remix(video_id, fields.prompt, request_tenant(request.scope))
        return JSONResponse(video.model_dump(mode="json"), headers=_poll_header(service))

    @api.get("/v1/videos/{video_id}")
    async def retrieve_video(request: Request, video_id: str):
        service = _service(request)
        video = await service.describe(await service.get(video_id, request_tenant(request.scope)))
        return JSONResponse(video.model_dump(mode="json"), headers=_poll_header(service))

    @api.delete("/v1/videos/{video_id}")
    async def delete_video(request: Request, video_id: str):
        await _service(request).delete(video_id, request_tenant(request.scope))
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @api.get("/v1/videos/{video_id}/content")
    async def download_content(request: Request, video_id: str, variant: str = "video"):
        path = await _service(request).content_path(video_id, variant, request_tenant(request.scope))
        suffix = path.suffix
        return FileResponse(path, media_type=VARIANT_MEDIA_TYPES[variant], filename=f"{video_id}{suffix}")

    @api.get("/v1/videos/{video_id}/events")
    async def video_events(request: Request, video_id: str):
        service = _service(request)
        await service.get(video_id, request_tenant(request.scope))  # 404 before the stream starts

        async def events():
            # Registered before the first read, so no write after that read is missed.
            with service.updates.follow(video_id) as pushed:
                record = await asyncio.to_thread(service.store.get, video_id)
                shown_at = None
                deadline = time.monotonic() + EVENT_STREAM_MAX_SECONDS
                while True:
                    if record is None:
                        yield _sse("deleted", {"id": video_id, "deleted": True})
                        return
                    # A pushed record can be older than the one first read: never step back.
                    if shown_at is None or record.updated_at > shown_at:
                        shown_at = record.updated_at
                        video = await service.describe(record)
                        yield _sse("progress", video.model_dump(mode="json"))
                        if record.status in TERMINAL_STATUSES:
                            yield _sse("done", video.model_dump(mode="json"))
                            return
                    if time.monotonic() >= deadline or await request.is_disconnected():
                        return
                    try:
                        record = await asyncio.wait_for(pushed.get(), FALLBACK_POLL_SECONDS)
                    except TimeoutError:  # run by another ingress replica: read the store
                        record = await asyncio.to_thread(service.store.get, video_id)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @api.get("/v1/models")
    async def list_models(request: Request):
        service = _service(request)
        return {
            "object": "list",
            "data": [
                {"id": spec.name, "object": "model", "created": 0, "owned_by": "videoserve",
                 # videoserve extensions: what the model does and which family runs it
                 "tasks": sorted(task.value for task in spec.tasks), "family": spec.family,
                 "default": spec.name == service.default_model}
                for spec in service.specs.values()
            ],
        }

    @api.get("/healthz")
    async def healthz(request: Request):
        service = _service(request)
        await asyncio.to_thread(service.store.count_by_status)  # the store answers
        return {"status": "ok", "models": list(service.specs)}

    @api.get("/metrics")
    async def metrics(request: Request):
        service = _service(request)
        await service.refresh_scraped_metrics()
        body = await asyncio.to_thread(generate_latest, service.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return api


def _unsupported(feature: str):
    async def refuse(request: Request):
        raise APIError(404, f"{request.method} {request.url.path}: '{feature}' is not supported by this server "
                            "(it creates, remixes, lists, retrieves and deletes videos and serves their content)",
                       code="unsupported_endpoint")

    return refuse


def _poll_header(service: VideoService) -> dict[str, str]:
    return {"openai-poll-after-ms": str(service.config.api.poll_after_ms)}


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
