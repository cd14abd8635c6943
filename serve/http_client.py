"""The HTTP client behind ``videoserve generate --server``: submit, follow progress, download."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from serve.progress_display import step_progress


class ServerError(RuntimeError):
    pass


def generate_over_http(server: str, fields: dict[str, Any], image: Path | None, output: Path, console: Console,
                       timeout_s: float = 3600) -> dict[str, Any]:
    """Create a video on ``server``, show its progress, and save it to ``output``."""
    base = server.rstrip("/")
    with httpx.Client(base_url=base, timeout=httpx.Timeout(60.0, read=timeout_s)) as client:
        if image is not None:
            form = {key: str(value) for key, value in fields.items()}
            with open(image, "rb") as file:
                response = client.post("/v1/videos", data=form, files={"input_reference": (image.name, file)})
        else:
            response = client.post("/v1/videos", json=fields)
        video = _checked(response)
        console.print(f"Accepted {video['id']} ({video['size']}, seed {video['seed']})")
        video = _follow(client, video, console)
        if video["status"] != "completed":
            error = video.get("error") or {}
            raise ServerError(f"video {video['id']} {video['status']}: {error.get('message', 'no reason given')}")
        variant = "frames" if output.suffix.lower() == ".npy" else "video"
        _download(client, f"/v1/videos/{video['id']}/content", variant, output)
        return video


def _follow(client: httpx.Client, video: dict[str, Any], console: Console) -> dict[str, Any]:
    with step_progress(console) as progress:
        bar = progress.add_task("queued", total=video.get("total_steps") or 1)
        for event, data in _server_sent_events(client, f"/v1/videos/{video['id']}/events"):
            if event == "deleted":
                raise ServerError(f"video {video['id']} was deleted")
            video = data
            label = video.get("stage") or video["status"]
            if video["status"] == "queued" and video.get("queue_position") is not None:
                label = f"queued (position {video['queue_position'] + 1})"
            progress.update(bar, description=label, total=video.get("total_steps") or 1,
                            completed=video.get("step") or 0)
            if event == "done":
                if video["status"] == "completed":
                    progress.update(bar, description="done", completed=video.get("total_steps") or 1)
                break
    return video


def _server_sent_events(client: httpx.Client, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with client.stream("GET", path) as response:
        if response.status_code != 200:
            response.read()
            _checked(response)
        event, data = "message", []
        for line in response.iter_lines():
            if not line:
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())


def _download(client: httpx.Client, path: str, variant: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}-")
    try:
        with os.fdopen(handle, "wb") as file, client.stream("GET", path, params={"variant": variant}) as response:
            if response.status_code != 200:
                response.read()
                _checked(response)
            for chunk in response.iter_bytes():
                file.write(chunk)
        os.replace(temporary, output)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _checked(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = error["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        raise ServerError(f"HTTP {response.status_code}: {message}")
    return response.json()
