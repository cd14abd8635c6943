"""Driving a DenoiseEngine by hand in rank scripts: tasks join at given steps, every step is recorded."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.batching.denoise_engine import DenoiseEngine, FinishedEvent, StepEvent
from engine.batching.denoise_scheduler import SchedulerConfig
from engine.stage_types import DenoiseTask, Latents


@dataclass
class EngineRun:
    finished: dict[str, Latents] = field(default_factory=dict)  # request id -> its final latents
    batch_sizes: list[int] = field(default_factory=list)  # requests in each step
    step_bytes: list[int] = field(default_factory=list)  # bytes the rank group moved in each step


def run_arrivals(executor, arrivals: list[tuple[DenoiseTask, int]], max_batch_size: int = 4) -> EngineRun:
    """Each ``(task, step)`` joins the engine at that step; runs until every task has finished."""
    engine = DenoiseEngine(executor, SchedulerConfig(max_batch_size=max_batch_size))
    pending = sorted(arrivals, key=lambda pair: pair[1])
    run, step = EngineRun(), 0
    while pending or engine.has_unfinished():
        while pending and pending[0][1] <= step:
            engine.add_request(pending.pop(0)[0])
        events = engine.step()
        step_events = [event for event in events if isinstance(event, StepEvent)]
        if step_events:
            run.batch_sizes.append(step_events[0].batch_size)
            run.step_bytes.append(step_events[0].communication.total_bytes)
        run.finished.update({event.request_id: event.latents for event in events if isinstance(event, FinishedEvent)})
        step += 1
    return run
