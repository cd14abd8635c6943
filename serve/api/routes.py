"""FastAPI routes. The VideoService behind them is set on ``app.state.service`` at start-up."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serve.api.api_keys import ApiKeyMiddleware, ApiKeys
from serve.api.create_request import create_from_fields, parse_create_fields, read_create_body
from serve.api.errors import APIError, install_error_handlers
from serve.artifact_store import VARIANT_MEDIA_TYPES
from serve.jobs.store import TERMINAL_STATUSES
from serve.jobs.updates import FALLBACK_POLL_SECONDS
from serve.video_service import VideoService

EVENT_STREAM_MAX_SECONDS = 3600


def _service(request: Request) -> VideoService:
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise APIError(503, "the server is starting", code="starting", headers={"Retry-After": "2"})
    return service


def create_api(api_keys: ApiKeys | None = None) -> FastAPI:
    """The app; with ``api_keys``, /v1/* answers 401 unless the request carries one of them."""
    api = FastAPI(title="videoserve", version="0.1.0")
    install_error_handlers(api)
    if api_keys is not None:
        # Added before count_requests, so it runs inside it and refused requests are counted too.
        api.add_middleware(ApiKeyMiddleware, api_keys=api_keys)

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

    @api.post("/v1/videos")
    async def create_video(request: Request):
        service = _service(request)
        data, image = await read_create_body(request, service.config.api.max_request_bytes)
        video = await create_from_fields(service, parse_create_fields(data), image)
        return JSONResponse(video.model_dump(mode="json"), headers=_poll_header(service))

    @api.get("/v1/videos")
    async def list_videos(
        request: Request,
        after: str | None = None,
        limit: int = Query(20, ge=1, le=100),
        order: Literal["asc", "desc"] = "desc",
    ):
        videos, has_more = await _service(request).list(after, limit, order)
        return {
            "object": "list",
            "data": [video.model_dump(mode="json") for video in videos],
            "first_id": videos[0].id if videos else None,
            "last_id": videos[-1].id if videos else None,
            "has_more": has_more,
        }

    @api.get("/v1/videos/{video_id}")
    async def retrieve_video(request: Request, video_id: str):
        service = _service(request)
        video = await service.describe(await service.get(video_id))
        return JSONResponse(video.model_dump(mode="json"), headers=_poll_header(service))

    @api.delete("/v1/videos/{video_id}")
    async def delete_video(request: Request, video_id: str):
        await _service(request).delete(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @api.get("/v1/videos/{video_id}/content")
    async def download_content(request: Request, video_id: str, variant: str = "video"):
        path = await _service(request).content_path(video_id, variant)
        suffix = path.suffix
        return FileResponse(path, media_type=VARIANT_MEDIA_TYPES[variant], filename=f"{video_id}{suffix}")

    @api.get("/v1/videos/{video_id}/events")
    async def video_events(request: Request, video_id: str):
        service = _service(request)
        await service.get(video_id)  # 404 before the stream starts

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


def _poll_header(service: VideoService) -> dict[str, str]:
    return {"openai-poll-after-ms": str(service.config.api.poll_after_ms)}


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
