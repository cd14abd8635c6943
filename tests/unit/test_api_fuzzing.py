"""Schemathesis fuzzes every operation of the API's own OpenAPI schema: no response is a 5xx.

``fuzz_api`` is the reusable part: give it an ASGI app (fuzzed in process) or the base URL of
a served one (``http://127.0.0.1:8000``), and it sends schema-conforming (positive) and
schema-violating (negative) requests to every operation, and reports what came back. The
tests here run it against the app the ingress serves (``create_api``) in front of a real
VideoService on a SQLite job store in tmp_path, without a job runner (accepted jobs stay
queued), in process and once through uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from serve.api.routes import create_api
from serve.app_config import AppConfig
from serve.artifact_store import ArtifactStore
from serve.jobs.open_store import open_job_store
from serve.metrics import VideoServeMetrics
from serve.video_service import VideoService

ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass
class FuzzReport:
    """What ``fuzz_api`` sent and what came back."""

    requests: int = 0
    statuses: Counter = field(default_factory=Counter)  # status code -> responses
    per_operation: Counter = field(default_factory=Counter)  # "POST /v1/videos" -> requests
    failures: list[str] = field(default_factory=list)  # one line per bad response (the first few of each kind)
    healthz_status: int | None = None
    not_negated: list[str] = field(default_factory=list)  # operations with nothing a negative case could break


    def summary(self) -> str:
        return (f"{self.requests} requests, statuses {dict(sorted(self.statuses.items()))}, "
                f"{len(self.failures)} failures, /healthz after: {self.healthz_status}"
                + "".join(f"\n  {line}" for line in self.failures[:20]))


def fuzz_api(target: Any, *, examples: int = 60, create_examples: int = 300, derandomize: bool = True,
             headers: dict[str, str] | None = None, timeout_s: float = 30.0,
             check: Callable[[Any, Any], str | None] | None = None) -> FuzzReport:
    """Fuzz every operation of ``target``'s /openapi.json and report what came back.

    ``target``: an ASGI app (called in process) or a base URL such as ``http://127.0.0.1:8000``
    (called over HTTP; pass ``headers={"Authorization": "Bearer ..."}`` where keys are on).
    Each operation gets ``examples`` positive and ``examples`` negative cases (POST /v1/videos
    ``create_examples`` of each); ``derandomize`` makes a run repeat the last one's cases.
    A failure is a 5xx, a 4xx whose body is not OpenAI's error shape, or an exception from the
    call; ``check(case, response)`` may add its own (return a message to fail). Ends with GET
    /healthz (``healthz_status``).
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    if isinstance(target, str):
        base_url = target.rstrip("/")
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=dict(headers or {}), timeout=timeout_s)
    else:
        base_url = None
        schema = schemathesis.openapi.from_asgi("/openapi.json", target)

    def call(case):
        kwargs = {"headers": headers} if headers else {}
        if base_url is not None:
            kwargs |= {"base_url": base_url, "timeout": timeout_s}
        return case.call(**kwargs)

    report = FuzzReport()
    seen_kinds: Counter = Counter()

    def record(label: str, case, problem: str) -> None:
        seen_kinds[(label, problem[:40])] += 1
        if seen_kinds[(label, problem[:40])] <= 3:
            report.failures.append(f"{label}: {problem} <- {_describe(case)}")

    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        count = create_examples if label == "POST /v1/videos" else examples
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)
            # Half of the cases drop `model`: a random model name ends at 404 before the rest is checked.
            strategy = st.tuples(strategy, st.booleans()).map(_maybe_default_model)

            @settings(max_examples=count, deadline=None, database=None, derandomize=derandomize,
                      phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
            @given(case=strategy)
            def run(case):
                report.requests += 1
                report.per_operation[label] += 1
                try:
                    response = call(case)
                except Exception as error:  # a crash inside the app surfaces here in process
                    record(label, case, f"raised {type(error).__name__}: {error}")
                    return
                report.statuses[response.status_code] += 1
                problem = _response_problem(response)
                if problem is None and check is not None:
                    problem = check(case, response)
                if problem is not None:
                    record(label, case, problem)

            try:
                run()
            except Unsatisfiable:
                # Nothing to negate: no parameters, or only path strings (any string is one).
                if mode is not GenerationMode.NEGATIVE:
                    raise
                report.not_negated.append(label)
    report.healthz_status = _healthz(target, base_url, headers, timeout_s)
    return report


def _maybe_default_model(pair):
    case, drop = pair
    if drop and isinstance(case.body, dict):
        case.body.pop("model", None)
    return case


def _response_problem(response) -> str | None:
    status = response.status_code
    if status >= 500:
        return f"{status}: {response.text[:300]}"
    if 400 <= status < 500:
        try:
            error = json.loads(response.content)["error"]
        except (ValueError, KeyError, TypeError):
            return f"{status} without OpenAI's error shape: {response.text[:300]}"
        if not isinstance(error, dict) or set(error) != ERROR_FIELDS or not isinstance(error["message"], str) \
                or not error["message"] or not isinstance(error["type"], str):
            return f"{status} without OpenAI's error shape: {response.text[:300]}"
    return None


def _describe(case) -> str:
    body = repr(case.body)
    return (f"{case.method} {case.formatted_path} query={case.query!r} media_type={case.media_type!r} "
            f"body={body[:300]}{'...' if len(body) > 300 else ''}")


def _healthz(target, base_url: str | None, headers: dict[str, str] | None, timeout_s: float) -> int:
    if base_url is not None:
        import requests

        return requests.get(f"{base_url}/healthz", headers=headers, timeout=timeout_s).status_code
    from starlette.testclient import TestClient

    with TestClient(target) as client:
        return client.get("/healthz", headers=headers).status_code


# --- the tests ------------------------------------------------------------------------------------


def served_app(tmp_path, specs) -> Any:
    # A large queue, so valid creates reach the store (and are listed, retrieved, deleted) instead of 429.
    config = AppConfig(storage={"state_dir": str(tmp_path)}, jobs={"max_queued": 100_000},
                       api={"max_request_bytes": 256 * 1024})
    store = open_job_store(config.storage.resolved_job_store_url())
    metrics = VideoServeMetrics(lambda: {status.value: count for status, count in store.count_by_status().items()})
    api = create_api()
    api.state.service = VideoService(config, {spec.name: spec for spec in specs}, store,
                                     ArtifactStore(config.storage.resolved_artifact_dir()), metrics, runner=None,
                                     expander_enabled=False)
    return api


def _assert_clean(report: FuzzReport, minimum: int) -> None:
    assert report.requests >= minimum, report.summary()
    assert report.failures == [], report.summary()
    assert report.healthz_status == 200, report.summary()


def test_fuzzing_every_operation_in_process_finds_no_5xx(tmp_path, tiny_spec, tiny_i2v_spec):
    started = time.monotonic()
    report = fuzz_api(served_app(tmp_path, [tiny_spec, tiny_i2v_spec]))
    print(f"\n{report.summary()}\nper operation: {dict(report.per_operation)}\n"
          f"in {time.monotonic() - started:.1f} s")
    _assert_clean(report, 1000)
    assert report.per_operation["POST /v1/videos"] >= 500
    assert any(200 <= status < 300 for status in report.statuses), report.summary()  # some creates got through


def test_fuzzing_through_uvicorn_on_loopback_finds_no_5xx(tmp_path, tiny_spec):
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(served_app(tmp_path, [tiny_spec]), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)
        report = fuzz_api(f"http://127.0.0.1:{port}", examples=10, create_examples=60)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    print(f"\n{report.summary()}")
    _assert_clean(report, 200)


@pytest.mark.parametrize("bad", ["500", "shape"])
def test_the_fuzzer_reports_a_5xx_and_a_4xx_without_the_error_shape(bad):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        if bad == "500":
            return JSONResponse({"error": "boom"}, status_code=500)
        return JSONResponse({"detail": "no such item"}, status_code=404)

    report = fuzz_api(app, examples=5)
    assert report.failures and all("GET /items/{item_id}" in line for line in report.failures), report.summary()
    assert ("500" if bad == "500" else "error shape") in report.failures[0]
