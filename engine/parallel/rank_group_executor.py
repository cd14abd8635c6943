"""Running the continuous-batching engine's steps on a gang of ranks.

Rank 0 (the Denoiser replica) owns the engine. Every other rank keeps a mirror of the
request states: each step, rank 0 sends only what changed — the tasks of requests that
joined since the last step (their conditioning crosses once), the ids of requests that
left, and the ids in this step's batch — then every rank runs the same batched step. The
parallel DiT hands every rank the same full model output, so each rank's own scheduler
step keeps its mirror identical to rank 0's state without latents ever being sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.parallel.communication_log import CommunicationLog, CommunicationVolume
from engine.stage_types import DenoiseTask, Latents
from engine.families.family import Denoising
from engine.stages.denoiser import DenoiseState


class RankFailed(RuntimeError):
    """A rank of the gang died or failed a step; the gang cannot run another step."""


@dataclass(frozen=True)
class StepMessage:
    started: tuple[DenoiseTask, ...]  # joined since the last message, in arrival order
    released: tuple[str, ...]  # left (aborted, expired, failed) since the last message
    batch: tuple[str, ...]  # this step's requests, in the order rank 0 stacks them


class PeerRanks(Protocol):
    """Carries step messages from rank 0 to ranks 1..N-1 (Ray actor calls, or a collective)."""

    def submit(self, message: StepMessage) -> Any:
        """Start the step on every peer; returns a handle for ``wait``."""

    def wait(self, handle: Any) -> None:
        """Block until every peer has finished the step; raise RankFailed if one could not."""


class RankMirror:
    """Ranks 1..N-1: apply rank 0's step messages to a copy of its request states."""

    def __init__(self, denoiser: Denoising):
        self.denoiser = denoiser
        self.states: dict[str, DenoiseState] = {}

    def apply(self, message: StepMessage) -> None:
        for task in message.started:
            self.states[task.request_id] = self.denoiser.start(task)
        for request_id in message.released:
            self.states.pop(request_id, None)
        states = [self.states[request_id] for request_id in message.batch]
        self.denoiser.step(states)
        for request_id, state in zip(message.batch, states):
            if state.finished:  # rank 0 finishes it after this step; nothing more will come
                del self.states[request_id]


class RankGroupExecutor:
    """The engine's executor on rank 0 of a gang: the same interface as InProcessExecutor."""

    def __init__(self, denoiser: Denoising, peers: PeerRanks, communication: CommunicationLog | None = None):
        self.denoiser = denoiser
        self.peers = peers
        self.communication = communication or CommunicationLog()
        self.last_step_communication = CommunicationVolume({}, {})
        self.failure: BaseException | None = None
        self._started: list[DenoiseTask] = []
        self._released: list[str] = []

    @property
    def broken(self) -> bool:
        return self.failure is not None

    def start(self, task: DenoiseTask) -> DenoiseState:
        state = self.denoiser.start(task)
        self._started.append(task)
        return state

    def release(self, request_id: str) -> None:
        """A request left the engine without finishing: peers forget it at the next step."""
        self._released.append(request_id)

    def execute(self, states: Sequence[DenoiseState]) -> None:
        if self.failure is not None:
            raise RankFailed(f"the rank group failed earlier: {self.failure!r}")
        message = StepMessage(tuple(self._started), tuple(self._released),
                              tuple(state.task.request_id for state in states))
        self._started, self._released = [], []
        local_error: BaseException | None = None
        try:
            handle = self.peers.submit(message)
        except Exception as error:
            self.failure = error
            raise RankFailed(f"could not send the step to the other ranks: {error!r}") from error
        try:
            self.denoiser.step(list(states))
        except Exception as error:  # a peer's death surfaces here as a failed collective
            local_error = error
        try:
            self.peers.wait(handle)
        except Exception as error:
            self.failure = error
            raise RankFailed(f"a rank failed during the step: {error!r}") from local_error or error
        if local_error is not None:
            self.failure = local_error
            raise RankFailed(f"rank 0 failed during the step: {local_error!r}") from local_error
        self.last_step_communication = self.communication.take()

    def finish(self, state: DenoiseState) -> Latents:
        return self.denoiser.finish(state)
