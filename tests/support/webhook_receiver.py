"""A Standard Webhooks receiver on loopback that verifies every delivery, for tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Hold the answer until the test ends: the sender's read timeout fires first.
    hold: bool = False


@dataclass(frozen=True)
class Delivery:
    headers: dict[str, str]
    body: bytes
    payload: Any | None  # what verify() returned; None when verification failed
    verification_error: str | None
    arrived_at: float  # time.monotonic() on the receiver


class WebhookReceiver:
    """An HTTP server that verifies Standard Webhooks signatures like a real receiver.

    Answers follow ``replies`` in order, then 200. A delivery whose signature does not
    verify is answered 401, as receivers built on standardwebhooks do.
    """

    def __init__(self, secret: str, replies: list[Reply] | None = None, host: str = "127.0.0.1"):
        self.deliveries: list[Delivery] = []
        self._verifier = Webhook(secret)
        self._replies = list(replies or [])
        self._lock = threading.Lock()
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class CountingServer(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                with receiver._lock:
                    receiver.connections += 1
                return True

        self.connections = 0  # TCP connections accepted, whether or not a request followed
        self._server = CountingServer((host, 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits up to one interval, once per test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.server_address[0]}:{self.port}/hooks/video"

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        arrived_at = time.monotonic()
        body = request.rfile.read(int(request.headers["Content-Length"]))
        headers = dict(request.headers.items())
        try:
            payload, error = self._verifier.verify(body, headers), None
        except WebhookVerificationError as verification_error:
            payload, error = None, str(verification_error)
        with self._lock:
            self.deliveries.append(Delivery(headers, body, payload, error, arrived_at))
            reply = self._replies.pop(0) if self._replies else Reply()
        if error is not None:
            reply = Reply(401)
        if reply.hold:
            self.release.wait(timeout=30)
        try:
            request.send_response(reply.status)
            for name, value in reply.headers.items():
                request.send_header(name, value)
            request.send_header("Content-Length", "0")
            request.end_headers()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sender gave up on a held answer

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
