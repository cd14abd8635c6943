"""The durable record of every video job, and the interface both storage backends share.

A job is written here before its id reaches the client, so an accepted job survives a
crash of the ingress, the orchestrator or the whole machine. Workers take jobs with
``claim``, which hands out a time-limited lease; a worker that dies stops renewing it and
the job becomes claimable again, which is how accepted jobs resume after a restart.
"""

from __future__ import annotations

import abc
import enum
import json
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

if TYPE_CHECKING:
    from serve.jobs.spec import JobSpec


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})

ListOrder = Literal["asc", "desc"]

# Changing these would silently re-order or re-key a job that clients already hold, or hand
# it to another tenant.
IMMUTABLE_FIELDS: frozenset[str] = frozenset({"id", "created_at", "owner"})

# The owner of every job when the API has no keys: one tenant sees everything.
SHARED_OWNER = "shared"

WebhookState = Literal["pending", "delivered", "failed"]


class WebhookOutbox(BaseModel):
    """A job's end-of-job webhook, written in the same store write that ends the job.

    Delivery is at least once: any ingress replica's deliverer takes a due entry (pushing
    ``next_attempt_at`` on by a lease, so a deliverer that dies lets another retry), and the
    entry only leaves ``pending`` once a receiver answered 2xx or the attempts ran out.
    ``message_id`` is the Standard Webhooks ``webhook-id``: the same on every retry, so
    receivers deduplicate on it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    message_id: str
    type: str
    created_at: int
    state: WebhookState = "pending"
    attempts: int = Field(default=0, ge=0)
    next_attempt_at: float = 0.0
    last_problem: str | None = None

    @classmethod
    def new(cls, event_type: str, now: float) -> WebhookOutbox:
        return cls(event_id=f"evt_{uuid.uuid4().hex}", message_id=f"msg_{uuid.uuid4().hex}", type=event_type,
                   created_at=int(now), next_attempt_at=now)

    @property
    def due_at(self) -> float | None:
        """When a deliverer should take it next; None once it is settled."""
        return self.next_attempt_at if self.state == "pending" else None


class JobRecord(BaseModel):
    """One job as stored: what was asked for, where it stands, and who is working on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    model: str = Field(min_length=1)
    # A digest of the API key that created it (SHARED_OWNER without auth): only it sees the job.
    owner: str = Field(default=SHARED_OWNER, min_length=1, max_length=128)
    status: JobStatus = JobStatus.QUEUED
    created_at: float  # unix seconds (float; the API shows int)
    updated_at: float
    completed_at: float | None = None
    params: dict[str, Any] = {}  # the JobSpec's stored form (serve/jobs/spec.py), JSON-safe (no image bytes)
    input_image_path: str | None = None
    webhook_url: str | None = None
    progress: int = Field(default=0, ge=0, le=100)
    stage: str | None = None
    step: int | None = Field(default=None, ge=0)
    total_steps: int | None = Field(default=None, ge=0)
    seed: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = Field(default=0, ge=0)  # times a worker claimed it
    cancel_requested: bool = False
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    artifacts: dict[str, str] = {}  # variant name -> file path
    metadata: dict[str, Any] = {}
    expires_at: float | None = None  # once ended: when the sweeper deletes the record and its files
    webhook_outbox: WebhookOutbox | None = None

    @property
    def spec(self) -> JobSpec:
        """What the job asks for, typed (``params`` holds its stored form)."""
        from serve.jobs.spec import JobSpec

        return JobSpec.from_stored(self.params, self.model, self.input_image_path is not None, self.webhook_url)

    @field_validator("params", "metadata")
    @classmethod
    def _json_safe(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # Both backends store the record as JSON; anything that would not come back
        # unchanged (bytes, NaN, objects) is refused here rather than mangled there.
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{info.field_name} must be JSON-serialisable ({error})") from None
        return value

    @field_validator("created_at", "updated_at", "completed_at", "lease_expires_at", "expires_at")
    @classmethod
    def _finite_time(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{info.field_name} must be a finite unix time (got {value!r})")
        return value

    @classmethod
    def new(cls, *, model: str, id: str | None = None, now: float | None = None, **fields: Any) -> JobRecord:
        """A fresh queued job; the id looks like OpenAI's (``video_<hex>``) unless given."""
        now = time.time() if now is None else now
        return cls(id=id or new_job_id(), model=model, created_at=now, updated_at=now, **fields)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def new_job_id() -> str:
    return f"video_{uuid.uuid4().hex}"


class JobExistsError(KeyError):
    """A job with this id is already stored."""


class QueueFull(Exception):
    """``create`` refused: ``scope`` ("global" or "owner") already holds ``queued`` queued jobs."""

    def __init__(self, scope: Literal["global", "owner"], queued: int, limit: int):
        super().__init__(f"{queued} jobs queued ({scope} limit {limit})")
        self.scope = scope
        self.queued = queued
        self.limit = limit


class JobStoreUnavailable(ConnectionError):
    """The store could not be reached (a Redis restart, a network cut): nothing is known to be
    written. Callers retry later; the API answers 503 with Retry-After, never a 500."""


class LeaseLost(Exception):
    """A fenced write by a worker that no longer holds the job's lease: refused, nothing written."""

    def __init__(self, job_id: str, fence: str, holder: str | None):
        super().__init__(f"job {job_id}: lease held by {holder!r}, not {fence!r}")
        self.job_id = job_id


@dataclass(frozen=True)
class Admission:
    """Queue bounds ``create`` checks in the same transaction as its insert (None: unbounded)."""

    max_queued: int | None = None
    max_queued_per_owner: int | None = None


class JobStore(abc.ABC):
    """Durable job records plus a lease-based work queue over them.

    Every backend orders jobs by ``(created_at, id)``: listing, FIFO claiming and queue
    positions all agree on it.
    """

    @abc.abstractmethod
    def create(self, job: JobRecord, admission: Admission | None = None) -> None:
        """Store a new job; durable when this returns. JobExistsError on a duplicate id.

        With ``admission``, a queued job is only inserted while the queue (and its owner's
        share of it) is under the bound, checked atomically with the insert: QueueFull
        otherwise, so concurrent creates never overshoot.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    def update(self, job_id: str, fence: str | None = None, **changes: Any) -> JobRecord | None:
        """Change some fields (validated through JobRecord); None if the job is missing.

        Sets ``updated_at`` (unless given) and, on the first move to a terminal status,
        ``completed_at`` (unless given). ``id``, ``created_at`` and ``owner`` cannot change.
        With ``fence`` (a worker's lease owner id) the write only happens while that worker
        holds the job's lease: LeaseLost otherwise.
        """

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job; its id stays usable as a list cursor (a tombstone keeps its place)."""

    @abc.abstractmethod
    def list(
        self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc", owner: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        """One page in ``(created_at, id)`` order, after the job ``after`` (exclusive).

        ``owner`` restricts it to that owner's jobs (None: every job). Returns
        ``(page, has_more)``. KeyError if ``after`` names no job stored now or deleted.
        """

    @abc.abstractmethod
    def claim(self, owner: str, lease_seconds: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None:
        """Atomically take the oldest claimable job, or None if there is none.

        Claimable: queued, or in_progress without a live lease (expired at ``now`` or
        released), i.e. its worker died or gave it back. The claimed job is in_progress,
        leased to ``owner`` until ``now + lease_seconds``, with ``attempts`` one higher:
        attempts count claims, so a job that kills its worker still uses them up. An
        abandoned job that already had ``max_attempts`` is not claimed but ended failed
        (code ``worker_died``, its webhook queued in the same write).
        """

    @abc.abstractmethod
    def claim_webhook(self, owner: str, lease_seconds: float, now: float | None = None) -> JobRecord | None:
        """Take the job with the oldest due pending webhook: its ``next_attempt_at`` moves to
        ``now + lease_seconds``, so no other deliverer takes it meanwhile and, should this one
        die, it is due again then. None if nothing is due."""

    @abc.abstractmethod
    def sweep_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        """Delete up to ``limit`` jobs whose ``expires_at`` has passed (and tombstones older than
        any record could be); the ids deleted, for their files to go too."""

    @abc.abstractmethod
    def count_queued(self, owner: str | None = None) -> int:
        """Queued jobs, of ``owner`` only when given."""

    @abc.abstractmethod
    def renew(self, job_id: str, owner: str, lease_seconds: float, now: float | None = None) -> bool:
        """Heartbeat: extend the lease. False if ``owner`` no longer holds an in_progress job."""

    @abc.abstractmethod
    def release(self, job_id: str, owner: str) -> None:
        """Drop ``owner``'s lease (a no-op if it does not hold it).

        A job released while still in_progress is claimable again at once.
        """

    @abc.abstractmethod
    def queued_ahead(self, job_id: str) -> int:
        """Queued jobs ordered before this one; 0 if it is not queued (or missing)."""

    @abc.abstractmethod
    def count_by_status(self) -> dict[JobStatus, int]:
        """Number of jobs in every status (each status is a key, zero included)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def apply_changes(job: JobRecord, changes: dict[str, Any], now: float, fence: str | None = None) -> JobRecord:
    """The record ``update`` would store: ``changes`` validated through JobRecord."""
    if fence is not None and (job.lease_owner != fence or job.status is not JobStatus.IN_PROGRESS):
        raise LeaseLost(job.id, fence, job.lease_owner)
    unknown = sorted(set(changes) - set(JobRecord.model_fields))
    if unknown:
        raise ValueError(f"unknown job field(s) {unknown}; a job has {sorted(JobRecord.model_fields)}")
    frozen = sorted(name for name in IMMUTABLE_FIELDS & set(changes) if changes[name] != getattr(job, name))
    if frozen:
        raise ValueError(f"job field(s) {frozen} cannot be changed (job {job.id!r})")
    changed = JobRecord.model_validate({**job.model_dump(), "updated_at": now, **changes})
    if changed.is_terminal and not job.is_terminal and "completed_at" not in changes:
        changed = changed.model_copy(update={"completed_at": now})
    return changed


def claimed(job: JobRecord, owner: str, lease_seconds: float, now: float, max_attempts: int | None = None
            ) -> JobRecord:
    """What ``claim`` writes: the job leased to ``owner``, or ended failed when a worker died
    with it ``max_attempts`` times already."""
    if max_attempts is not None and job.status is JobStatus.IN_PROGRESS and job.attempts >= max_attempts:
        return job.model_copy(update={
            "status": JobStatus.FAILED, "stage": None, "lease_owner": None, "lease_expires_at": None,
            "updated_at": now, "completed_at": now, "error_code": "worker_died",
            "error_message": f"the worker running it stopped during each of its {job.attempts} attempts",
            "webhook_outbox": WebhookOutbox.new("video.failed", now) if job.webhook_url else None,
        })
    return job.model_copy(
        update={
            "status": JobStatus.IN_PROGRESS,
            "lease_owner": owner,
            "lease_expires_at": now + lease_seconds,
            "attempts": job.attempts + 1,
            "updated_at": now,
        }
    )


def is_claimable(job: JobRecord, now: float) -> bool:
    if job.status is JobStatus.QUEUED:
        return True
    return job.status is JobStatus.IN_PROGRESS and (job.lease_expires_at is None or job.lease_expires_at <= now)


def check_lease_request(owner: str, lease_seconds: float) -> None:
    if not owner:
        raise ValueError("owner must be a non-empty string")
    if not (math.isfinite(lease_seconds) and lease_seconds > 0):
        raise ValueError(f"lease_seconds must be a positive number of seconds (got {lease_seconds!r})")


def taken_webhook(job: JobRecord, lease_seconds: float, now: float) -> JobRecord:
    assert job.webhook_outbox is not None
    return job.model_copy(update={"webhook_outbox": job.webhook_outbox.model_copy(
        update={"next_attempt_at": now + lease_seconds})})


# Tombstones keep a deleted job's place as a list cursor this long after the record could
# last have existed; past that a client holding the cursor gets a 404, as for any unknown id.
TOMBSTONE_SECONDS = 30 * 24 * 3600.0


def check_page_request(limit: int, order: str) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer (got {limit!r})")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc' (got {order!r})")
