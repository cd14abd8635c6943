"""Step-level scheduler for the Denoiser: which requests run the next DiT forward.

vLLM splits its engine into a scheduler (who runs this step), a runner (one batched
forward) and a small engine loop; this module is the scheduler. It is plain Python, with
no torch, numpy or ray anywhere in it, so its policy is tested on a CPU by calling
``schedule()`` and ``update_from_output()`` by hand. One engine step::

    output = scheduler.schedule(now)   # the caller fails output.expired, cleans up output.aborted
    ...                                # run one denoising step for output.request_ids
    finished = scheduler.update_from_output(output, StepResult(ran_ids))

Policy
------
- Continuous batching: requests join and leave at step boundaries. A request added
  between two ``schedule()`` calls can run in the very next step, next to the requests of
  its key that are already running.
- One batch key per step: requests share a forward only if their keys for that step are
  equal. A request's key is its ``batch_key`` (everything that changes tensor shapes),
  paired, when it has ``step_keys``, with its entry for the step it is about to run (a
  two-expert model's expert at that step): a request moves to another bucket between
  steps when that entry changes, and joins that bucket's queue as a newcomer would.
- Fairness across keys: least recently served first. Each key holding requests has a
  stamp from a counter that only grows. A key is stamped when it starts holding requests
  and again every time it runs; ``schedule()`` runs the key with the smallest stamp. The
  key that runs is stamped past every other key, and a key that appears later is stamped
  past all existing ones, so once a key holds requests it runs within K steps, K being the
  number of keys holding requests at that moment, however steady the stream of other
  keys' requests. Newcomers queue behind existing keys rather than in front of them: a
  stream of new keys cannot starve an old one either.
- Within a key: first come, first served by ``arrival_time``, ties by the order of
  ``add_request``. The batch is filled in that order, first-fit: a request joins while the
  batch has fewer than ``max_batch_size`` requests and its ``tokens`` fit in what is left
  of ``max_tokens_per_step``; one that does not fit is passed over this step and a younger,
  smaller one may take the room. The oldest request always runs, alone when its tokens
  alone exceed the limit (otherwise it would never run). A request is only ever held back
  by older requests of its key, which finish in a bounded number of steps, so none
  starves inside its key. A younger request may take the place of an older one that
  already started only if the caller gives it an earlier ``arrival_time``.
- Deadlines: ``schedule(now)`` removes every request whose ``deadline < now``, started or
  not, and returns its id in ``expired``.
- Abort: ``abort_request`` marks a request; the next ``schedule()`` removes it and returns
  its id in ``aborted``, whether it was waiting, running, or finished its last step after
  the abort (an abort wins over finishing: the caller has already decided to drop it). An
  aborted request never runs another step.
- One step in flight: after a ``schedule()`` that ran requests, the next ``schedule()``
  waits for ``update_from_output()`` for that step, so no request runs two steps at once.
  A runner that failed reports the requests that did run (possibly none).
- Deterministic: no clock (``now`` is an argument), no randomness, and no iteration over
  sets or hash order, so the same calls give the same outputs in every process.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 8  # requests per step
    max_tokens_per_step: int | None = None  # sum of ScheduledRequest.tokens per step; None = no limit

    def __post_init__(self):
        if not _is_positive_int(self.max_batch_size):
            raise ValueError(f"max_batch_size must be an integer >= 1 (got {self.max_batch_size!r})")
        if self.max_tokens_per_step is not None and not _is_positive_int(self.max_tokens_per_step):
            raise ValueError(f"max_tokens_per_step must be None or an integer >= 1 (got {self.max_tokens_per_step!r})")


@dataclass
class ScheduledRequest:
    """One request as the scheduler sees it. Treat it as read-only once added: the
    scheduler advances ``steps_done`` and relies on the other fields staying put."""

    request_id: str
    batch_key: Hashable  # opaque: requests may share a step only if keys are equal
    total_steps: int
    tokens: int  # this request's cost in one step (e.g. latent tokens x 2 with CFG)
    arrival_time: float
    deadline: float | None = None  # absolute time; past it the request expires at the next schedule()
    steps_done: int = 0  # maintained by the scheduler
    # The part of the key that changes from step to step, one entry per step (e.g. the MoE
    # expert each step runs); None when the key never changes.
    step_keys: tuple[Hashable, ...] | None = None

    def __post_init__(self):
        self.validate()

    @property
    def remaining_steps(self) -> int:
        return self.total_steps - self.steps_done

    @property
    def current_key(self) -> Hashable:
        """The key of the step this request runs next."""
        if self.step_keys is None:
            return self.batch_key
        return (self.batch_key, self.step_keys[self.steps_done])

    def validate(self) -> None:
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ValueError(f"request_id must be a non-empty string (got {self.request_id!r})")
        try:
            hash(self.batch_key)
        except TypeError:
            raise ValueError(f"batch_key must be hashable (got a {type(self.batch_key).__name__})") from None
        if not _is_positive_int(self.total_steps):
            raise ValueError(f"total_steps must be an integer >= 1 (got {self.total_steps!r})")
        if not _is_positive_int(self.tokens):
            raise ValueError(f"tokens must be an integer >= 1 (got {self.tokens!r})")
        if not _is_real(self.arrival_time) or not math.isfinite(self.arrival_time):
            raise ValueError(f"arrival_time must be a finite number (got {self.arrival_time!r})")
        # NaN compares false with everything: such a deadline would silently never expire.
        if self.deadline is not None and (not _is_real(self.deadline) or math.isnan(self.deadline)):
            raise ValueError(f"deadline must be None or a number (got {self.deadline!r})")
        if not _is_int(self.steps_done) or not 0 <= self.steps_done < self.total_steps:
            raise ValueError(
                f"steps_done must be an integer from 0 to total_steps - 1 = {self.total_steps - 1} "
                f"(got {self.steps_done!r})"
            )
        if self.step_keys is not None:
            if not isinstance(self.step_keys, tuple) or len(self.step_keys) != self.total_steps:
                raise ValueError(f"step_keys must be None or a tuple of total_steps = {self.total_steps} keys "
                                 f"(got {self.step_keys!r})")
            try:
                hash(self.step_keys)
            except TypeError:
                raise ValueError("step_keys must be a tuple of hashable keys") from None


@dataclass(frozen=True)
class SchedulerOutput:
    batch_key: Hashable | None  # None when nothing runs this step
    request_ids: tuple[str, ...]  # run ONE step for each of these, in this order
    expired: tuple[str, ...]  # deadline passed: removed, the caller fails them
    aborted: tuple[str, ...]  # aborted since the last schedule(): removed, the caller cleans up


@dataclass(frozen=True)
class StepResult:
    """What the runner reports back: the scheduled requests that did run their step."""

    request_ids: tuple[str, ...]


@dataclass(frozen=True)
class SchedulerLoad:
    """How much work the scheduler holds: the Denoiser's autoscaling signal."""

    requests: int
    total_remaining_steps: int
    # Forwards needed to finish every held request. Exact when nothing else arrives, expires
    # or is aborted and every scheduled request runs; an estimate otherwise.
    remaining_step_batches: int


class DenoiseScheduler:
    def __init__(self, config: SchedulerConfig):
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig (got a {type(config).__name__})")
        self.config = config
        self._requests: dict[str, ScheduledRequest] = {}
        self._add_order: dict[str, int] = {}
        self._adds = 0
        # Keys in the order they appeared; both dicts hold exactly the keys with requests.
        self._by_key: dict[Hashable, dict[str, ScheduledRequest]] = {}
        self._key_stamps: dict[Hashable, int] = {}
        self._fairness_clock = 0
        self._aborting: dict[str, None] = {}  # insertion-ordered set: aborted is reported in call order
        self._in_flight: SchedulerOutput | None = None

    def add_request(self, request: ScheduledRequest) -> None:
        if not isinstance(request, ScheduledRequest):
            raise TypeError(f"request must be a ScheduledRequest (got a {type(request).__name__})")
        # The request is mutable: check it again as it is now, not as it was built.
        request.validate()
        if request.request_id in self._requests:
            raise ValueError(f"request_id {request.request_id!r} is already scheduled")
        self._requests[request.request_id] = request
        self._add_order[request.request_id] = self._adds
        self._adds += 1
        self._enter_bucket(request)

    def abort_request(self, request_id: str) -> bool:
        """Mark a held request for removal at the next schedule(); False for an unknown id.

        Aborting the same request again before that schedule() returns True and reports it once.
        """
        if request_id not in self._requests:
            return False
        self._aborting[request_id] = None
        return True

    def schedule(self, now: float) -> SchedulerOutput:
        if not _is_real(now) or math.isnan(now):
            raise ValueError(f"now must be a number (got {now!r})")
        if self._in_flight is not None:
            raise RuntimeError(
                "schedule() called before update_from_output() for the step it scheduled last "
                f"({list(self._in_flight.request_ids)}); report that step, with StepResult(()) if none ran"
            )
        aborted = tuple(self._aborting)
        for request_id in aborted:
            self._remove(request_id)
        self._aborting.clear()
        expired = tuple(
            request_id
            for request_id, request in self._requests.items()
            if request.deadline is not None and request.deadline < now
        )
        for request_id in expired:
            self._remove(request_id)
        if not self._key_stamps:
            return SchedulerOutput(batch_key=None, request_ids=(), expired=expired, aborted=aborted)

        key = min(self._key_stamps, key=self._key_stamps.__getitem__)
        candidates = sorted(self._by_key[key].values(), key=self._first_come_first_served)
        chosen = _first_fit([request.tokens for request in candidates], self.config)
        self._key_stamps[key] = self._next_stamp()
        output = SchedulerOutput(
            batch_key=key,
            request_ids=tuple(candidates[index].request_id for index in chosen),
            expired=expired,
            aborted=aborted,
        )
        self._in_flight = output
        return output

    def update_from_output(self, output: SchedulerOutput, result: StepResult) -> list[str]:
        """Advance the requests that ran; remove and return those that ran their last step."""
        ran = result.request_ids
        not_scheduled = [request_id for request_id in ran if request_id not in output.request_ids]
        if not_scheduled:
            raise ValueError(f"StepResult.request_ids names requests this step did not schedule: {not_scheduled}")
        if len(set(ran)) != len(ran):
            raise ValueError(f"StepResult.request_ids repeats a request: {list(ran)}")
        if not output.request_ids:
            return []
        if output != self._in_flight:
            raise RuntimeError(
                "update_from_output() got a step that is not awaiting its result "
                "(already reported, or not the last one this scheduler scheduled)"
            )
        self._in_flight = None
        ran_set = set(ran)
        finished = []
        for request_id in output.request_ids:
            if request_id not in ran_set:
                continue
            request = self._requests[request_id]
            key = request.current_key
            request.steps_done += 1
            if request.steps_done == request.total_steps:
                # Aborted after its last step: the next schedule() removes it (from the bucket it ran in).
                if request_id not in self._aborting:
                    self._remove(request_id)
                    finished.append(request_id)
            elif request.current_key != key:  # its next step runs on another key (e.g. the other expert)
                self._leave_bucket(request, key)
                self._enter_bucket(request)
        return finished

    def has_unfinished(self) -> bool:
        """True while any request is held, aborted ones included: the next schedule() reports them."""
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        """Requests that can still run (held and not aborted)."""
        return len(self._requests) - len(self._aborting)

    def queued_by_key(self) -> dict[Hashable, int]:
        """Requests that can still run, waiting or started, per batch key."""
        counts = {key: len(self._live(bucket)) for key, bucket in self._by_key.items()}
        return {key: count for key, count in counts.items() if count}

    def load(self) -> SchedulerLoad:
        requests = total_remaining_steps = remaining_step_batches = 0
        for bucket in self._by_key.values():
            live = sorted(self._live(bucket), key=self._first_come_first_served)
            requests += len(live)
            total_remaining_steps += sum(request.remaining_steps for request in live)
            # Each step serves one key, so the keys' step counts add up whatever their interleaving.
            remaining_step_batches += _steps_to_finish(
                [request.tokens for request in live], [request.remaining_steps for request in live], self.config
            )
        return SchedulerLoad(requests, total_remaining_steps, remaining_step_batches)

    def _live(self, bucket: dict[str, ScheduledRequest]) -> list[ScheduledRequest]:
        return [request for request_id, request in bucket.items() if request_id not in self._aborting]

    def _first_come_first_served(self, request: ScheduledRequest) -> tuple[float, int]:
        return request.arrival_time, self._add_order[request.request_id]

    def _next_stamp(self) -> int:
        self._fairness_clock += 1
        return self._fairness_clock

    def _remove(self, request_id: str) -> None:
        request = self._requests.pop(request_id)
        del self._add_order[request_id]
        self._leave_bucket(request, self._bucket_key(request))

    def _bucket_key(self, request: ScheduledRequest) -> Hashable:
        # A request aborted after its last step has steps_done == total_steps: it stays
        # in the bucket of the step it ran last.
        if request.step_keys is not None and request.steps_done == request.total_steps:
            return (request.batch_key, request.step_keys[-1])
        return request.current_key

    def _enter_bucket(self, request: ScheduledRequest) -> None:
        key = request.current_key
        bucket = self._by_key.get(key)
        if bucket is None:
            bucket = self._by_key[key] = {}
            self._key_stamps[key] = self._next_stamp()
        bucket[request.request_id] = request

    def _leave_bucket(self, request: ScheduledRequest, key: Hashable) -> None:
        bucket = self._by_key[key]
        del bucket[request.request_id]
        if not bucket:
            # A key that empties loses its place: when it comes back it queues behind the others.
            del self._by_key[key]
            del self._key_stamps[key]


def _first_fit(tokens: Sequence[int], config: SchedulerConfig) -> list[int]:
    """Indices of the requests (in first-come-first-served order) that share one step."""
    chosen: list[int] = []
    used = 0
    limit = config.max_tokens_per_step
    for index, cost in enumerate(tokens):
        if len(chosen) == config.max_batch_size:
            break
        # The oldest request runs even when it alone exceeds the limit, or it would never run.
        if not chosen or limit is None or used + cost <= limit:
            chosen.append(index)
            used += cost
    return chosen


def _steps_to_finish(tokens: Sequence[int], remaining: Sequence[int], config: SchedulerConfig) -> int:
    """Steps one key needs to finish its requests under the same first-fit policy.

    A batch keeps its members until one of them finishes (the order and the costs do not
    change in between), so this jumps from one finish to the next instead of stepping.
    """
    tokens, remaining = list(tokens), list(remaining)
    steps = 0
    while tokens:
        batch = _first_fit(tokens, config)
        advance = min(remaining[index] for index in batch)
        steps += advance
        for index in batch:
            remaining[index] -= advance
        keep = [index for index, left in enumerate(remaining) if left > 0]
        tokens = [tokens[index] for index in keep]
        remaining = [remaining[index] for index in keep]
    return steps


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as a step count is a bug, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return _is_int(value) and value >= 1


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
