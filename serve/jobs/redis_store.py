"""JobStore in Redis, for clusters whose workers run on several machines.

Layout under a key prefix ``p`` (default ``videoserve``):

- ``p:job:{id}``        the record as JSON
- ``p:jobs``            sorted set of every id scored by created_at (listing)
- ``p:status:{status}`` one sorted set per status, scored by created_at (FIFO, counts)
- ``p:leases``          in_progress ids scored by lease expiry (``-inf`` when unleased)
- ``p:owner:{o}:jobs``  each owner's ids scored by created_at (a tenant's listing)
- ``p:owner:{o}:queued`` each owner's queued ids (its share of the queue bound)
- ``p:expiry``          ended jobs scored by expires_at (the retention sweeper)
- ``p:webhooks``        jobs with a pending webhook, scored by when it is next due
- ``p:deleted``         hash: a deleted id -> "created_at owner deleted_at" (its cursor place)

Equal scores sort by id bytes in Redis, so every set already follows the
``(created_at, id)`` order the interface promises. Records are validated and built in
Python with pydantic and written by a compare-and-set Lua script that also moves the id
between the index sets, so a record and its indexes never disagree and two writers can
never both win from the same version (which is what makes ``claim`` exclusive). Records
are never re-encoded inside Lua: its cjson would round timestamps to 14 digits and turn
empty lists into objects.

Durability is Redis's own: run it with ``appendonly yes`` (``appendfsync always`` for no
loss window at all). Every key a script writes is under one prefix on one server; this
targets a standalone or Sentinel-managed Redis (as KubeRay's GCS fault tolerance uses),
not Redis Cluster.
"""

from __future__ import annotations

import functools
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from serve.jobs.store import (
    TOMBSTONE_SECONDS,
    Admission,
    JobExistsError,
    JobRecord,
    JobStatus,
    JobStore,
    JobStoreUnavailable,
    ListOrder,
    QueueFull,
    apply_changes,
    check_lease_request,
    check_page_request,
    claimed,
    is_claimable,
    taken_webhook,
)

DEFAULT_PREFIX = "videoserve"
_STATUSES = tuple(JobStatus)

# Every index is a sorted set a record is in (with a score) or not; Python works out which
# from the record, so one script keeps them all in step with it.
# KEYS: job, then the index sets. ARGV: expected current JSON ('' = must not exist), new JSON,
#       id, then one score per index set ('' = not a member), then the queue bounds for a
#       create: global max ('' = none), owner max ('' = none).
# Returns 1 written, 0 lost the race, -1 / -2 the global / owner queue is full.
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
local sets = #KEYS - 1
local global_max, owner_max = ARGV[4 + sets], ARGV[5 + sets]
if global_max ~= '' and redis.call('ZCARD', KEYS[1 + QUEUED]) >= tonumber(global_max) then return -1 end
if owner_max ~= '' and redis.call('ZCARD', KEYS[1 + OWNER_QUEUED]) >= tonumber(owner_max) then return -2 end
redis.call('SET', KEYS[1], ARGV[2])
for i = 1, sets do
  local score = ARGV[3 + i]
  if score == '' then redis.call('ZREM', KEYS[1 + i], ARGV[3]) else redis.call('ZADD', KEYS[1 + i], score, ARGV[3]) end
end
return 1
"""

# KEYS: job, the index sets, the tombstone hash. ARGV: expected JSON, id, tombstone.
_DELETE = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
for i = 2, #KEYS - 1 do redis.call('ZREM', KEYS[i], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[#KEYS], ARGV[2], ARGV[3]) end
return 1
"""

# The oldest claimable job and its JSON, read in one atomic snapshot. Rank in the
# all-jobs set is the (created_at, id) order, so no string comparison happens in Lua.
# KEYS: all-jobs, leases, queued. ARGV: now, job key prefix.
_OLDEST_CLAIMABLE = """
local best, best_rank = nil, nil
local function consider(id)
  local rank = redis.call('ZRANK', KEYS[1], id)
  if best_rank == nil or rank < best_rank then best, best_rank = id, rank end
end
local head = redis.call('ZRANGE', KEYS[3], 0, 0)
if head[1] then consider(head[1]) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])) do consider(id) end
if best == nil then return false end
return {best, redis.call('GET', ARGV[2] .. best)}
"""

# One page of JSON records; {0} when the cursor id is unknown.
# KEYS: the listing set (all jobs or one owner's). ARGV: cursor id ('' = from the start), page
# size + 1, 'asc'|'desc', job key prefix, the cursor's created_at when it was deleted ('' = it
# must be in the set). A deleted cursor's place is the count of members ordered before it.
_PAGE = """
local ascending = ARGV[3] == 'asc'
local start = 0
if ARGV[1] ~= '' then
  local rank
  if ARGV[5] ~= '' then
    local before = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[5])
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[5], ARGV[5])) do
      if id < ARGV[1] then before = before + 1 end
    end
    if ascending then start = before else start = redis.call('ZCARD', KEYS[1]) - before end
  else
    if ascending then rank = redis.call('ZRANK', KEYS[1], ARGV[1]) else rank = redis.call('ZREVRANK', KEYS[1], ARGV[1]) end
    if rank == false then return {0} end
    start = rank + 1
  end
end
local stop = start + tonumber(ARGV[2]) - 1
local ids
if ascending then ids = redis.call('ZRANGE', KEYS[1], start, stop) else ids = redis.call('ZREVRANGE', KEYS[1], start, stop) end
local page = {1}
for _, id in ipairs(ids) do page[#page + 1] = redis.call('GET', ARGV[4] .. id) end
return page
"""


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://h:p/0?prefix=x&socket_timeout=5`` -> (``redis://h:p/0?socket_timeout=5``, ``x``)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in query if name == "prefix"]
    if len(prefixes) > 1 or (prefixes and (not prefixes[0] or any(c.isspace() for c in prefixes[0]))):
        raise ValueError(f"prefix in job store url must be one non-empty word without spaces (got {prefixes})")
    rest = urlencode([(name, value) for name, value in query if name != "prefix"])
    return urlunsplit(parts._replace(query=rest)), (prefixes[0] if prefixes else DEFAULT_PREFIX)


# Raised by redis-py when the server is gone or too slow; the client already retried these
# (redis-py's default Retry) before they reach here.
_OUTAGES = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


def _outages_as_unavailable(method):
    """A Redis outage becomes the store's JobStoreUnavailable: callers above never import redis."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except _OUTAGES as error:
            raise JobStoreUnavailable(f"the job store (redis) is unreachable: {type(error).__name__}") from error

    return wrapper


class RedisJobStore(JobStore):
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX):
        self.client = client
        self.prefix = prefix
        self._all_key = f"{prefix}:jobs"
        self._leases_key = f"{prefix}:leases"
        self._status_keys = {status: f"{prefix}:status:{status.value}" for status in _STATUSES}
        self._expiry_key = f"{prefix}:expiry"
        self._webhooks_key = f"{prefix}:webhooks"
        self._deleted_key = f"{prefix}:deleted"
        # Positions (1-based, among the index sets) of the two sets a create's bounds count.
        queued_set = 3 + _STATUSES.index(JobStatus.QUEUED)
        owner_queued_set = 3 + len(_STATUSES) + 1
        script = _COMPARE_AND_SET.replace("OWNER_QUEUED", str(owner_queued_set)).replace("QUEUED", str(queued_set))
        self._compare_and_set = client.register_script(script)
        self._delete = client.register_script(_DELETE)
        self._oldest_claimable = client.register_script(_OLDEST_CLAIMABLE)
        self._page = client.register_script(_PAGE)

    def _owner_key(self, owner: str, what: str) -> str:
        return f"{self.prefix}:owner:{owner}:{what}"

    def _indexes(self, job: JobRecord) -> list[tuple[str, str]]:
        """Every index set with the job's score in it ('' = not a member), in the scripts' order."""
        created = repr(job.created_at)
        in_progress = job.status is JobStatus.IN_PROGRESS
        lease = ("-inf" if job.lease_expires_at is None else repr(job.lease_expires_at)) if in_progress else ""
        due = job.webhook_outbox.due_at if job.webhook_outbox is not None else None
        return [
            (self._all_key, created),
            (self._leases_key, lease),
            *[(key, created if status is job.status else "") for status, key in self._status_keys.items()],
            (self._owner_key(job.owner, "jobs"), created),
            (self._owner_key(job.owner, "queued"), created if job.status is JobStatus.QUEUED else ""),
            (self._expiry_key, "" if job.expires_at is None else repr(job.expires_at)),
            (self._webhooks_key, "" if due is None else repr(due)),
        ]

    @classmethod
    def from_url(cls, url: str, password: str | None = None) -> RedisJobStore:
        """Connect and check the server answers; ``password`` is for AUTH (kept out of the URL)."""
        client_url, prefix = split_prefix(url)
        location = urlsplit(client_url)
        where = f"job store redis at {location.hostname}:{location.port or 6379}"
        if password is not None and location.password is not None:
            # redis-py would quietly prefer the URL's; two sources of one secret is a mistake.
            raise ValueError(f"{where}: its url has a password and one was given separately; keep only one")
        options = {} if password is None else {"password": password}
        client = redis.Redis.from_url(client_url, decode_responses=True, **options)
        try:
            client.ping()
        except redis.AuthenticationError as error:
            client.close()
            given = "the password given was refused" if password or location.password else "no password was given"
            raise ConnectionError(
                f"{where} refused to authenticate ({given}: {error}); the password comes from the environment "
                "variable that storage.job_store_password_env names"
            ) from error
        except redis.RedisError as error:
            client.close()
            raise ConnectionError(f"{where} is not reachable: {error}") from error
        return cls(client, prefix)

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _write_if_unchanged(self, expected_json: str, job: JobRecord, admission: Admission | None = None) -> bool:
        """Store ``job`` only if its stored JSON is still ``expected_json`` ('' = absent)."""
        indexes = self._indexes(job)
        bounds = ["", ""]
        if admission is not None and job.status is JobStatus.QUEUED:
            bounds = ["" if bound is None else str(bound)
                      for bound in (admission.max_queued, admission.max_queued_per_owner)]
        arguments = [expected_json, job.model_dump_json(), job.id, *[score for _, score in indexes], *bounds]
        written = self._compare_and_set(keys=[self._job_key(job.id), *[key for key, _ in indexes]], args=arguments)
        if written < 0:
            scope = "global" if written == -1 else "owner"
            limit = admission.max_queued if written == -1 else admission.max_queued_per_owner
            raise QueueFull(scope, self.count_queued(None if scope == "global" else job.owner), limit)
        return written == 1

    def _read(self, job_id: str) -> tuple[str, JobRecord] | None:
        stored = self.client.get(self._job_key(job_id))
        return None if stored is None else (stored, JobRecord.model_validate_json(stored))

    def create(self, job: JobRecord, admission: Admission | None = None) -> None:
        if not self._write_if_unchanged("", job, admission):
            # The client retries a call whose connection dropped after Redis ran it: the
            # first run's record is this very one, and the create did happen.
            if self.client.get(self._job_key(job.id)) != job.model_dump_json():
                raise JobExistsError(job.id)

    def get(self, job_id: str) -> JobRecord | None:
        found = self._read(job_id)
        return None if found is None else found[1]

    def update(self, job_id: str, fence: str | None = None, **changes: Any) -> JobRecord | None:
        while True:  # lost a race to another writer: re-read and re-apply
            found = self._read(job_id)
            if found is None:
                return None
            stored, job = found
            changed = apply_changes(job, changes, time.time(), fence)
            if self._write_if_unchanged(stored, changed):
                return changed

    def delete(self, job_id: str) -> bool:
        while True:
            found = self._read(job_id)
            if found is None:
                return False
            stored, job = found
            tombstone = f"{job.created_at!r} {job.owner} {time.time()!r}"
            keys = [self._job_key(job_id), *[key for key, _ in self._indexes(job)], self._deleted_key]
            if self._delete(keys=keys, args=[stored, job_id, tombstone]) == 1:
                return True

    def list(
        self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc", owner: str | None = None
    ) -> tuple[list[JobRecord], bool]:
        check_page_request(limit, order)
        if after == "":  # '' means "no cursor" to the script; no job has an empty id
            raise KeyError("after: no job with id ''")
        listing = self._all_key if owner is None else self._owner_key(owner, "jobs")
        deleted_at = ""
        if after is not None:
            cursor = self.get(after)
            if cursor is not None and owner is not None and cursor.owner != owner:
                raise KeyError(f"after: no job with id {after!r}")
            if cursor is None:
                tombstone = self.client.hget(self._deleted_key, after)
                if tombstone is None:
                    raise KeyError(f"after: no job with id {after!r}")
                created, deleted_owner, _ = tombstone.split(" ")
                if owner is not None and deleted_owner != owner:
                    raise KeyError(f"after: no job with id {after!r}")
                deleted_at = created
        found, *records = self._page(
            keys=[listing], args=[after or "", limit + 1, order, self._job_key(""), deleted_at]
        )
        if found == 0:
            raise KeyError(f"after: no job with id {after!r}")
        page = [JobRecord.model_validate_json(record) for record in records[:limit]]
        return page, len(records) > limit

    def claim(self, owner: str, lease_seconds: float, now: float | None = None,
              max_attempts: int | None = None) -> JobRecord | None:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        while True:  # each lost race means another claimer took a job; pick again
            found = self._oldest_claimable(
                keys=[self._all_key, self._leases_key, self._status_keys[JobStatus.QUEUED]],
                args=[repr(now), self._job_key("")],
            )
            if not found:
                return None
            job_id, stored = found
            job = JobRecord.model_validate_json(stored)
            if not is_claimable(job, now):
                raise RuntimeError(f"job store index under {self.prefix!r} lists job {job_id!r} as claimable but it is not")
            taken = claimed(job, owner, lease_seconds, now, max_attempts)
            if self._write_if_unchanged(stored, taken) and taken.status is JobStatus.IN_PROGRESS:
                return taken

    def claim_webhook(self, owner: str, lease_seconds: float, now: float | None = None) -> JobRecord | None:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        while True:
            due = self.client.zrangebyscore(self._webhooks_key, "-inf", repr(now), start=0, num=1)
            if not due:
                return None
            found = self._read(due[0])
            if found is None:  # deleted between the two reads
                self.client.zrem(self._webhooks_key, due[0])
                continue
            stored, job = found
            if job.webhook_outbox is None or job.webhook_outbox.due_at is None or job.webhook_outbox.due_at > now:
                continue  # another deliverer took it since: its score moved
            taken = taken_webhook(job, lease_seconds, now)
            if self._write_if_unchanged(stored, taken):
                return taken

    def sweep_expired(self, now: float | None = None, limit: int = 100) -> list[str]:
        now = time.time() if now is None else now
        swept = []
        for job_id in self.client.zrangebyscore(self._expiry_key, "-inf", repr(now), start=0, num=limit):
            found = self._read(job_id)
            if found is None:
                self.client.zrem(self._expiry_key, job_id)
                continue
            if found[1].expires_at is not None and found[1].expires_at <= now and self.delete(job_id):
                swept.append(job_id)
        stale = [job_id for job_id, tombstone in self.client.hscan_iter(self._deleted_key, count=1000)
                 if float(tombstone.rsplit(" ", 1)[1]) <= now - TOMBSTONE_SECONDS]
        if stale:
            self.client.hdel(self._deleted_key, *stale)
        return swept

    def count_queued(self, owner: str | None = None) -> int:
        key = self._status_keys[JobStatus.QUEUED] if owner is None else self._owner_key(owner, "queued")
        return self.client.zcard(key)

    def renew(self, job_id: str, owner: str, lease_seconds: float, now: float | None = None) -> bool:
        check_lease_request(owner, lease_seconds)
        now = time.time() if now is None else now
        while True:
            found = self._read(job_id)
            if found is None:
                return False
            stored, job = found
            if job.status is not JobStatus.IN_PROGRESS or job.lease_owner != owner:
                return False
            renewed = job.model_copy(update={"lease_expires_at": now + lease_seconds, "updated_at": now})
            if self._write_if_unchanged(stored, renewed):
                return True

    def release(self, job_id: str, owner: str) -> None:
        while True:
            found = self._read(job_id)
            if found is None or found[1].lease_owner != owner:
                return
            stored, job = found
            update = {"lease_owner": None, "lease_expires_at": None, "updated_at": time.time()}
            if self._write_if_unchanged(stored, job.model_copy(update=update)):
                return

    def queued_ahead(self, job_id: str) -> int:
        rank = self.client.zrank(self._status_keys[JobStatus.QUEUED], job_id)
        return 0 if rank is None else rank

    def count_by_status(self) -> dict[JobStatus, int]:
        with self.client.pipeline(transaction=True) as pipeline:
            for key in self._status_keys.values():
                pipeline.zcard(key)
            counts = pipeline.execute()
        return dict(zip(_STATUSES, counts))

    def close(self) -> None:
        self.client.close()


def _wrap_store_methods(cls: type) -> None:
    # Every operation of the JobStore interface, so none can leak a redis exception upwards.
    for name in JobStore.__abstractmethods__:
        if name in cls.__dict__ and name != "close":
            setattr(cls, name, _outages_as_unavailable(cls.__dict__[name]))


_wrap_store_methods(RedisJobStore)
