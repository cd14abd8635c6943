"""Step-level continuous batching: scheduler -> executor -> update, one step per call.

The engine owns no model: the executor runs the step (in this process; on a gang of
ranks with the parallel DiT), the scheduler decides who runs. ``step()`` is the whole
loop body. Requests join and leave between steps; an abort or a passed deadline takes
effect at the next step.

One thread drives an engine: every method, adds and aborts included, is called from it
(engine/batching/async_denoise_engine.py queues them to its step thread), so nothing here locks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.batching.denoise_scheduler import DenoiseScheduler, ScheduledRequest, SchedulerConfig, SchedulerLoad, StepResult
from engine.parallel.communication_log import CommunicationVolume
from engine.stage_types import DenoiseTask, Latents
from engine.families.family import Denoising
from engine.stages.denoiser import DenoiseState


@dataclass(frozen=True)
class StepEvent:
    request_id: str
    step: int
    total_steps: int
    step_seconds: float
    batch_size: int
    # What this rank handed to collectives in the step (the whole batch's); empty on one rank.
    communication: CommunicationVolume = CommunicationVolume({}, {})


@dataclass(frozen=True)
class FinishedEvent:
    request_id: str
    latents: Latents


@dataclass(frozen=True)
class DroppedEvent:
    request_id: str
    reason: str  # "aborted", "expired" or "failed: <error>"


EngineEvent = StepEvent | FinishedEvent | DroppedEvent


class Executor(Protocol):
    """Runs the engine's steps: on this process, or on a gang of ranks (engine/parallel)."""

    denoiser: Denoising
    last_step_communication: CommunicationVolume

    def start(self, task: DenoiseTask) -> DenoiseState: ...

    def release(self, request_id: str) -> None: ...

    def execute(self, states: Sequence[DenoiseState]) -> None: ...

    def finish(self, state: DenoiseState) -> Latents: ...


class InProcessExecutor:
    """Runs each step on this process's denoiser (the ``uni`` executor)."""

    last_step_communication = CommunicationVolume({}, {})

    def __init__(self, denoiser: Denoising):
        self.denoiser = denoiser

    def start(self, task: DenoiseTask) -> DenoiseState:
        return self.denoiser.start(task)

    def release(self, request_id: str) -> None:
        pass  # nothing outside this process holds the request

    def execute(self, states: Sequence[DenoiseState]) -> None:
        self.denoiser.step(list(states))

    def finish(self, state: DenoiseState) -> Latents:
        return self.denoiser.finish(state)


class DenoiseEngine:
    def __init__(self, executor: Executor, config: SchedulerConfig,
                 clock: Callable[[], float] = time.monotonic):
        self.executor = executor
        self.scheduler = DenoiseScheduler(config)
        self._clock = clock
        self._states: dict[str, DenoiseState] = {}

    def add_request(self, task: DenoiseTask, deadline: float | None = None) -> None:
        state = self.executor.start(task)
        denoiser = self.executor.denoiser
        request = ScheduledRequest(
            request_id=task.request_id,
            batch_key=denoiser.batch_key(task),
            total_steps=state.total_steps,
            tokens=denoiser.step_tokens(task),
            arrival_time=self._clock(),
            deadline=deadline,
            # Two-expert models: requests share a forward only on the same expert.
            step_keys=state.experts if denoiser.spec.experts > 1 else None,
        )
        self.scheduler.add_request(request)
        self._states[task.request_id] = state

    def abort_request(self, request_id: str) -> bool:
        return self.scheduler.abort_request(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def load(self) -> SchedulerLoad:
        return self.scheduler.load()

    def step(self) -> list[EngineEvent]:
        output = self.scheduler.schedule(self._clock())
        dropped = [(rid, "expired") for rid in output.expired] + [(rid, "aborted") for rid in output.aborted]
        for request_id, _ in dropped:
            self._states.pop(request_id, None)
            self.executor.release(request_id)
        states = [self._states[request_id] for request_id in output.request_ids]
        events: list[EngineEvent] = [DroppedEvent(request_id, reason) for request_id, reason in dropped]
        if not states:
            return events
        started = time.perf_counter()
        try:
            self.executor.execute(states)
        except Exception as error:  # a failed step fails its requests, not the engine
            self.scheduler.update_from_output(output, StepResult(()))
            for request_id in output.request_ids:
                self.scheduler.abort_request(request_id)
                self._states.pop(request_id, None)
                self.executor.release(request_id)
            return events + [DroppedEvent(rid, f"failed: {error!r}") for rid in output.request_ids]
        elapsed = time.perf_counter() - started
        finished = self.scheduler.update_from_output(output, StepResult(output.request_ids))
        finished_states = {request_id: self._states.pop(request_id) for request_id in finished}
        communication = self.executor.last_step_communication
        events += [
            StepEvent(state.task.request_id, state.steps_done, state.total_steps, elapsed, len(states), communication)
            for state in states
        ]
        events += [FinishedEvent(rid, self.executor.finish(state)) for rid, state in finished_states.items()]
        return events
