"""A real ``redis-server`` on a free 127.0.0.1 port, for tests of the Redis-backed code.

Use ``running_redis_server(data_dir)`` as a context manager, or import the session-scoped
``redis_server`` fixture into a test module or conftest::

    from tests.support.redis_server import redis_server  # noqa: F401
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER_BINARY = "/usr/bin/redis-server"  # Debian's redis-server package


def redis_server_binary() -> str:
    found = REDIS_SERVER_BINARY if Path(REDIS_SERVER_BINARY).is_file() else shutil.which("redis-server")
    if found is None:
        raise RuntimeError(f"no redis-server at {REDIS_SERVER_BINARY} or on PATH; install it: apt-get install redis-server")
    return found
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """One redis-server process keeping its files (AOF, log) in ``data_dir``.

    Stopping it shuts Redis down cleanly, so starting it again on the same ``data_dir``
    reloads everything written before (a new port is picked each start, unless
    ``keep_port``: then every restart binds the first start's port, as a restarted server
    behind a fixed address does). ``kill`` is a crash: SIGKILL, no flush.
    """

    def __init__(self, data_dir: Path, *, appendonly: bool = True, appendfsync: str = "everysec",
                 password: str | None = None, keep_port: bool = False):
        self.data_dir = Path(data_dir)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password  # set: the server runs with --requirepass and refuses clients without it
        self.keep_port = keep_port
        self.port: int | None = None
        self._fixed_port: int | None = None
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("redis-server is not running")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError(f"redis-server already running on port {self.port}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Another process may take the probed port before Redis binds it; try a few.
        for _ in range(5 if self._fixed_port is None else 50):
            port = self._fixed_port or free_port()
            process = subprocess.Popen(self._command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if self._wait_until_ready(process, port, self.password):
                self.port, self._process = port, process
                if self.keep_port:
                    self._fixed_port = port
                return
            self._terminate(process)
            if self._fixed_port is not None:
                time.sleep(0.1)  # the old server's socket may linger a moment
        raise RuntimeError(f"redis-server did not start; its log {self.log_path}:\n{self._log_tail()}")

    def _command(self, port: int) -> list[str]:
        return [
            redis_server_binary(),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            *(["--requirepass", self.password] if self.password is not None else []),
        ]  # fmt: skip

    @staticmethod
    def _wait_until_ready(process: subprocess.Popen, port: int, password: str | None) -> bool:
        client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_connect_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    # Loading an AOF answers LOADING errors until it is done.
                    # The pid check rules out a different server that already held the port.
                    if client.ping() and client.info("server")["process_id"] == process.pid:
                        return True
                    return False
                except (redis.ConnectionError, redis.BusyLoadingError):
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _log_tail(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path.exists() else "(no log)"

    @staticmethod
    def _terminate(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.terminate()  # SIGTERM: Redis flushes the AOF and exits cleanly
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        if self._process is not None:
            self._terminate(self._process)
        self._process, self.port = None, None

    def kill(self) -> None:
        """Crash it: SIGKILL, so only what the AOF had fsynced survives."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process, self.port = None, None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_redis_server(data_dir: Path, **options) -> Iterator[RedisServer]:
    server = RedisServer(data_dir, **options)
    with server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests keep apart with their own key prefix."""
    with running_redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
