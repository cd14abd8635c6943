"""The continuous-batching engine on its own step thread, with an asyncio face.

As in vLLM v1 (``EngineCore`` busy loop, ``AsyncLLM`` in front of it), callers never touch
the scheduler or the executor: ``denoise()`` queues an *add* to the step thread and reads
the request's own event stream; a caller that goes away queues an *abort*. The step
thread applies everything queued between two steps, then runs one step, so the
scheduler, the request states and the executor's per-step state (on a gang: the requests
to send to the peers) are touched by that thread alone and need no lock.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.batching.denoise_engine import DenoiseEngine, DroppedEvent, EngineEvent, Executor, FinishedEvent, StepEvent
from engine.batching.denoise_scheduler import SchedulerConfig, SchedulerLoad
from engine.stage_types import DenoiseTask, Latents

logger = logging.getLogger("videoserve.engine")


@dataclass(frozen=True)
class DenoiseProgress:
    """One step of one request, as its stream reports it."""

    step: int
    total_steps: int
    step_seconds: float
    batch_size: int
    # Payload bytes the rank group's collectives moved in this step, by kind (empty on one rank).
    communication_bytes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DenoiseDone:
    """The last event of a request's stream: its final latents."""

    latents: Latents


class DenoiseDropped(RuntimeError):
    """The request left the engine unfinished: aborted, past its deadline, or its step failed."""

    def __init__(self, request_id: str, reason: str):
        super().__init__(f"denoising {request_id} {reason} before it finished")
        self.request_id = request_id
        self.reason = reason


@dataclass(frozen=True)
class _Add:
    task: DenoiseTask
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue


@dataclass(frozen=True)
class _Abort:
    request_id: str


@dataclass(frozen=True)
class _Call:
    """Other model work (encode a prompt, decode a video) run on the step thread between two steps;
    its outcome goes to ``result``, which the caller waits on (or cancels: then it never runs)."""

    function: Callable[[], Any]
    result: concurrent.futures.Future


_STOP = object()


class AsyncDenoiseEngine:
    """Owns a ``DenoiseEngine`` and the one thread that drives it."""

    def __init__(
        self,
        executor: Executor,
        config: SchedulerConfig,
        clock: Callable[[], float] = time.monotonic,
        thread_initializer: Callable[[], None] | None = None,
        on_step: Callable[[Sequence[EngineEvent]], None] | None = None,
    ):
        self._engine = DenoiseEngine(executor, config, clock)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Held while checking for shutdown and queueing a call, so no call lands behind the stop.
        self._intake = threading.Lock()
        self._stopped = False
        self._on_step = on_step
        # Written by the step thread only; readers on other threads take the whole snapshot
        # (a reference swap is atomic), never the scheduler itself.
        self._load = SchedulerLoad(0, 0, 0)
        self._thread = threading.Thread(target=self._run, args=(thread_initializer,), name="denoise-engine",
                                        daemon=True)
        self._thread.start()

    @property
    def executor(self) -> Executor:
        return self._engine.executor

    def load(self) -> SchedulerLoad:
        """The work held after the last step: the Denoiser's autoscaling signal."""
        return self._load

    async def denoise(self, task: DenoiseTask, deadline: float | None = None
                      ) -> AsyncIterator[DenoiseProgress | DenoiseDone]:
        """Run ``task`` in the batching engine: one DenoiseProgress per step, then DenoiseDone.

        Raises DenoiseDropped if the request leaves unfinished. Leaving the iteration
        early (the caller was cancelled) aborts the request at the next step boundary.
        """
        events: asyncio.Queue = asyncio.Queue()
        self._inbox.put(_Add(task, deadline, asyncio.get_running_loop(), events))
        done = False
        try:
            while True:
                event = await events.get()
                if isinstance(event, StepEvent):
                    yield DenoiseProgress(event.step, event.total_steps, event.step_seconds, event.batch_size,
                                          dict(event.communication.bytes_by_kind))
                elif isinstance(event, FinishedEvent):
                    done = True
                    yield DenoiseDone(event.latents)
                    return
                else:
                    done = True
                    raise DenoiseDropped(task.request_id, event.reason)
        finally:
            if not done:
                self._inbox.put(_Abort(task.request_id))

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        """``function(*args)`` on the step thread, between two denoising steps.

        A replica that holds every model stage on one device (the colocated layout) runs
        its text encoding, image conditioning and VAE decoding here, so they take turns
        with the DiT's steps instead of competing with them for the device.
        """
        return await asyncio.wrap_future(self._submit(function, *args))

    def run_blocking(self, function: Callable[..., Any], *args: Any) -> Any:
        """``run`` for a caller without an event loop to await on (start-up work)."""
        return self._submit(function, *args).result()

    def _submit(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        result: concurrent.futures.Future = concurrent.futures.Future()
        with self._intake:
            if self._stopped:
                raise RuntimeError("the denoise engine shut down")
            self._inbox.put(_Call(functools.partial(function, *args), result))
        return result

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop the step thread after the step in flight; requests still held are dropped."""
        with self._intake:
            self._stopped = True
            self._inbox.put(_STOP)
        self._thread.join(timeout)

    def _run(self, thread_initializer: Callable[[], None] | None) -> None:
        if thread_initializer is not None:
            thread_initializer()
        streams: dict[str, _Add] = {}
        while True:
            # Idle: sleep until something arrives. Busy: take what arrived during the step.
            commands = [self._inbox.get()] if not self._engine.has_unfinished() else []
            while True:
                try:
                    commands.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            for index, command in enumerate(commands):
                if command is _STOP:
                    self._drop_all(streams, commands[index + 1:])
                    return
                self._apply(command, streams)
            if commands:  # the new work counts for autoscaling before its first step
                self._load = self._engine.load()
            if self._engine.has_unfinished():
                try:
                    events = self._engine.step()
                except Exception:  # the engine turns step failures into events; this is a bug
                    logger.exception("the denoise engine failed a step")
                    events = []
                # Published before the events: a caller that sees its request finish sees the load without it.
                self._load = self._engine.load()
                self._dispatch(events, streams)
                if self._on_step is not None:
                    self._on_step(events)

    def _apply(self, command, streams: dict[str, _Add]) -> None:
        if isinstance(command, _Call):
            _call(command)
            return
        if isinstance(command, _Abort):
            streams.pop(command.request_id, None)  # its caller is gone: nobody to tell
            self._engine.abort_request(command.request_id)
            return
        request_id = command.task.request_id
        if request_id in streams:
            _post(command, DroppedEvent(request_id, "failed: a request with this id is already running"))
            return
        try:
            self._engine.add_request(command.task, command.deadline)
        except Exception as error:  # a bad task fails its own request, never the thread
            _post(command, DroppedEvent(request_id, f"failed: {error!r}"))
            return
        streams[request_id] = command

    def _dispatch(self, events: Sequence[EngineEvent], streams: dict[str, _Add]) -> None:
        for event in events:
            stream = streams.get(event.request_id)
            if stream is None:
                continue
            if not isinstance(event, StepEvent):  # the request's last event
                del streams[event.request_id]
            _post(stream, event)

    def _drop_all(self, streams: dict[str, _Add], unapplied: Sequence[Any]) -> None:
        for request_id, stream in streams.items():
            _post(stream, DroppedEvent(request_id, "aborted: the engine shut down"))
        streams.clear()
        while True:  # whatever was queued behind the stop: nobody will run it
            try:
                unapplied = [*unapplied, self._inbox.get_nowait()]
            except queue.Empty:
                break
        for command in unapplied:
            if isinstance(command, _Call):
                if command.result.set_running_or_notify_cancel():
                    command.result.set_exception(RuntimeError("the denoise engine shut down before this ran"))
            elif isinstance(command, _Add):
                _post(command, DroppedEvent(command.task.request_id, "aborted: the engine shut down"))


def _call(command: _Call) -> None:
    if not command.result.set_running_or_notify_cancel():  # its caller gave up waiting
        return
    try:
        command.result.set_result(command.function())
    except Exception as raised:  # the caller gets it; the step thread goes on
        command.result.set_exception(raised)


def _post(stream: _Add, event: EngineEvent) -> None:
    try:
        stream.loop.call_soon_threadsafe(stream.events.put_nowait, event)
    except RuntimeError:  # the caller's event loop has closed: nobody is listening
        pass
