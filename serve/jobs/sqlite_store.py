"""JobStore in one SQLite file: the default for a single machine, safe across its processes.

WAL mode lets readers (status polls) run while a writer commits; every write that reads
before it writes takes ``BEGIN IMMEDIATE`` so two processes can never both claim a job;
``synchronous=FULL`` makes a commit durable before ``create`` returns.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from serve.jobs.store import (
    TOMBSTONE_SECONDS,
    Admission,
    JobExistsError,
    JobRecord,
    JobStatus,
    JobStore,
    ListOrder,
    QueueFull,
    apply_changes,
    check_lease_request,
    check_page_request,
    claimed,
    taken_webhook,
)

SCHEMA_VERSION = 2

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        lease_expires_at REAL,
        record TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_lease ON jobs (status, lease_expires_at)",
)
# Version 2: tenancy, retention and the webhook outbox, each an indexed column beside the record.
_SCHEMA_V2 = (
    "ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT 'shared'",
    "ALTER TABLE jobs ADD COLUMN expires_at REAL",
    "ALTER TABLE jobs ADD COLUMN webhook_due_at REAL",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner_status ON jobs (owner, status)",
    "CREATE INDEX IF NOT EXISTS jobs_by_expiry ON jobs (expires_at)",
    "CREATE INDEX IF NOT EXISTS jobs_by_webhook_due ON jobs (webhook_due_at)",
    # A deleted job's place in the (created_at, id) order, so its id still works as a cursor.
    """CREATE TABLE IF NOT EXISTS deleted_jobs (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        created_at REAL NOT NULL,
        deleted_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS deleted_jobs_by_time ON deleted_jobs (deleted_at)",
)


def sqlite_path_from_url(url: str) -> Path:
    """``sqlite:///abs/path/jobs.db`` (or ``sqlite:////abs/...``) -> ``/abs/path/jobs.db``."""
    parts = urlsplit(url)
    path = unquote(parts.path)
    if parts.scheme != "sqlite" or parts.netloc or parts.query or not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"sqlite job store url must look like sqlite:///absolute/path/jobs.db (got {url!r})")
    return Path("/" + path.lstrip("/"))


class SqliteJobStore(JobStore):
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        # A small pool instead of one shared connection: the ingress calls from many
        # threads, and readers should not queue behind a writer's fsync.
        self._pool_lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False
        self._create_schema()

    def _open_connection(self) -> sqlite3.Connection:
        connection = sqlite3.connect(
            self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._pool_lock:
            if self._closed:
                raise RuntimeError(f"job store {self.path} is closed")
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            connection = self._open_connection()
        try:
            yield connection
        finally:
            with self._pool_lock:
                if self._closed:
                    connection.close()
                else:
                    self._idle.append(connection)

    @contextlib.contextmanager
    def _transaction(self, begin: str) -> Iterator[sqlite3.Connection]:
        with self._connection() as connection:
            connection.execute(begin)
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                # Never hand an open transaction back to the pool (a failed COMMIT included).
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise

    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return self._transaction("BEGIN IMMEDIATE")

    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        # One snapshot for multi-statement reads (a cursor lookup and its page).
        return self._transaction("BEGIN DEFERRED")

    def _create_schema(self) -> None:
        with self._writing() as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"job store {self.path} has schema version {version}; this videoserve reads up to {SCHEMA_VERSION}"
                )
            for statement in _SCHEMA:
                connection.execute(statement)
            if version < 2:
                for statement in _SCHEMA_V2:
                    connection.execute(statement)
                # Version-1 records carry no owner, expiry or outbox: the column defaults match.
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    def _fetch(connection: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = connection.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else JobRecord.model_validate_json(row[0])

    @staticmethod
    def _store(connection: sqlite3.Connection, job: JobRecord) -> None:
        connection.execute(
            "UPDATE jobs SET status = ?, lease_expires_at = ?, expires_at = ?, webhook_due_at = ?, record = ?"
            " WHERE id = ?",
            (job.status.value, job.lease_expires_at, job.expires_at, _webhook_due(job), job.model_dump_json(), job.id),
        )

    def create(self, job: JobRecord, admission: Admission | None = None) -> None:
        try:
            with self._writing() as connection:
                if admission is not None and job.status is JobStatus.QUEUED:
                    _admit(connection, job.owner, admission)
                connection.execute(
                    "INSERT INTO jobs (id, status, created_at, lease_expires_at, owner, expires_at, webhook_due_at,"
                    " record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.status.value, job.created_at, job.lease_expires_at, job.owner, job.expires_at,
                     _webhook_due(job), job.model_dump_json()),
                )
        except sqlite3.IntegrityError:
            raise JobExistsError(job.id) from None

    def get(self, job_id: str) -> JobRecord | None:
        with self._connection() as connection:
            return self._fetch(connection, job_id)

    def update(self, job_id: str, fence: str | None = None, **changes: Any) -> JobRecord | None:
        with self._writing() as connection:
            job = self._fetch(connection, job_id)
            if job is None:
                return None
            job = apply_changes(job, changes, time.time(), fence)
            self._store(connection, job)
            return job

    def delete(self, job_id: str) -> bool:
        with self._writing() as connection:
            row = connection.execute("SELECT owner, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            connection.execute("INSERT OR REPLACE INTO deleted_jobs (id, owner, created_at, deleted_at)"
                               " VALUES (?, ?, ?, ?)", (job_id, row[0], row[1], time.time()))
            return True

    def list(
        self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc", owner: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        check_page_request(limit, order)
        direction, beyond = ("ASC", ">") if order == "asc" else ("DESC", "<")
        with self._reading() as connection:
            conditions, arguments = [], []
            if owner is not None:
                conditions.append("owner = ?")
                arguments.append(owner)
            if after is not None:
                row = connection.execute(
                    "SELECT owner, created_at FROM jobs WHERE id = ?"
                    " UNION ALL SELECT owner, created_at FROM deleted_jobs WHERE id = ?", (after, after)
                ).fetchone()
                if row is None or (owner is not None and row[0] != owner):
                    raise KeyError(f"after: no job with id {after!r}")
                conditions.append(f"(created_at, id) {beyond} (?, ?)")
                arguments += [row[1], after]
            where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
            rows = connection.execute(
                f"SELECT record FROM jobs {where} ORDER BY created_at {direction}, id {direction} LIMIT ?",
                (*arguments, limit + 1),
            ).fetchall()
        page = [JobRecord.model_validate_json(record) for (record,) in rows[:limit]]
        return page, len(rows) > limit

    def claim(self, owner: str, lease_seconds: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        with self._writing() as connection:
            while True:  # a job that used up its attempts is ended here; look for the next
                job = self._claim_one(connection, owner, lease_seconds, now, max_attempts)
                if job is None or job.status is JobStatus.IN_PROGRESS:
                    return job

    def _claim_one(self, connection: sqlite3.Connection, owner: str, lease_seconds: float, now: float,
                   max_attempts: int | None) -> JobRecord | None:
        oldest_queued = connection.execute(
            "SELECT created_at, id, record FROM jobs WHERE status = ? ORDER BY created_at, id LIMIT 1",
            (JobStatus.QUEUED.value,),
        ).fetchone()
        oldest_abandoned = connection.execute(
            "SELECT created_at, id, record FROM jobs WHERE status = ?"
            " AND (lease_expires_at IS NULL OR lease_expires_at <= ?) ORDER BY created_at, id LIMIT 1",
            (JobStatus.IN_PROGRESS.value, now),
        ).fetchone()
        candidates = [row for row in (oldest_queued, oldest_abandoned) if row is not None]
        if not candidates:
            return None
        job = claimed(JobRecord.model_validate_json(min(candidates)[2]), owner, lease_seconds, now, max_attempts)
        self._store(connection, job)
        return job

    def claim_webhook(self, owner: str, lease_seconds: float, now: float | None = None) -> JobRecord | None:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        with self._writing() as connection:
            row = connection.execute(
                "SELECT record FROM jobs WHERE webhook_due_at <= ? ORDER BY webhook_due_at LIMIT 1", (now,)
            ).fetchone()
            if row is None:
                return None
            job = taken_webhook(JobRecord.model_validate_json(row[0]), lease_seconds, now)
            self._store(connection, job)
            return job

    def sweep_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        now = time.time() if now is None else now
        with self._writing() as connection:
            rows = connection.execute(
                "SELECT id FROM jobs WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", (now, limit)
            ).fetchall()
            expired = [job_id for (job_id,) in rows]
            for job_id in expired:  # tombstoned like any delete: a client's cursor keeps working
                connection.execute("INSERT OR REPLACE INTO deleted_jobs (id, owner, created_at, deleted_at)"
                                   " SELECT id, owner, created_at, ? FROM jobs WHERE id = ?", (now, job_id))
                connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            connection.execute("DELETE FROM deleted_jobs WHERE deleted_at <= ?", (now - TOMBSTONE_SECONDS,))
        return expired

    def count_queued(self, owner: str | None = None) -> int:
        with self._connection() as connection:
            return _queued(connection, owner)

    def renew(self, job_id: str, owner: str, lease_seconds: float, now: float | None = None) -> bool:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        with self._writing() as connection:
            job = self._fetch(connection, job_id)
            if job is None or job.status is not JobStatus.IN_PROGRESS or job.lease_owner != owner:
                return False
            self._store(connection, job.model_copy(update={"lease_expires_at": now + lease_seconds, "updated_at": now}))
            return True

    def release(self, job_id: str, owner: str) -> None:
        with self._writing() as connection:
            job = self._fetch(connection, job_id)
            if job is not None and job.lease_owner == owner:
                update = {"lease_owner": None, "lease_expires_at": None, "updated_at": time.time()}
                self._store(connection, job.model_copy(update=update))

    def queued_ahead(self, job_id: str) -> int:
        with self._reading() as connection:
            row = connection.execute("SELECT status, created_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] != JobStatus.QUEUED.value:
                return 0
            (ahead,) = connection.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND (created_at, id) < (?, ?)",
                (JobStatus.QUEUED.value, row[1], job_id),
            ).fetchone()
            return ahead

    def count_by_status(self) -> dict[JobStatus, int]:
        with self._connection() as connection:
            rows = connection.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update({JobStatus(status): count for status, count in rows})
        return counts

    def close(self) -> None:
        with self._pool_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _webhook_due(job: JobRecord) -> float | None:
    return None if job.webhook_outbox is None else job.webhook_outbox.due_at


def _queued(connection: sqlite3.Connection, owner: str | None) -> int:
    if owner is None:
        query, arguments = "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
    else:
        query, arguments = "SELECT COUNT(*) FROM jobs WHERE owner = ? AND status = ?", (owner, JobStatus.QUEUED.value)
    (count,) = connection.execute(query, arguments).fetchone()
    return count


def _admit(connection: sqlite3.Connection, owner: str, admission: Admission) -> None:
    """Inside the insert's write transaction: no other create counts between this and the insert."""
    if admission.max_queued is not None:
        queued = _queued(connection, None)
        if queued >= admission.max_queued:
            raise QueueFull("global", queued, admission.max_queued)
    if admission.max_queued_per_owner is not None:
        queued = _queued(connection, owner)
        if queued >= admission.max_queued_per_owner:
            raise QueueFull("owner", queued, admission.max_queued_per_owner)
