"""JobStore in Redis, for clusters whose workers run on several machines.

Layout under a key prefix ``p`` (default ``videoserve``):

- ``p:job:{id}``        the record as JSON
- ``p:jobs``            sorted set of every id scored by created_at (listing)
- ``p:status:{status}`` one sorted set per status, scored by created_at (FIFO, counts)
- ``p:leases``          in_progress ids scored by lease expiry (``-inf`` when unleased)

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

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from serve.jobs.store import (
    JobExistsError,
    JobRecord,
    JobStatus,
    JobStore,
    ListOrder,
    apply_changes,
    check_lease_request,
    check_page_request,
    claimed,
    is_claimable,
)

DEFAULT_PREFIX = "videoserve"
_STATUSES = tuple(JobStatus)

# KEYS: job, all-jobs, leases, then one set per status in _STATUSES order.
# ARGV: expected current JSON ('' = must not exist), new JSON, id, created_at,
#       index of the new status in _STATUSES (1-based), lease score ('' = not in_progress).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[3]) end
redis.call('ZADD', KEYS[3 + tonumber(ARGV[5])], ARGV[4], ARGV[3])
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[3], ARGV[3])
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3])
end
return 1
"""

# KEYS: same as _COMPARE_AND_SET. ARGV: id.
_DELETE = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
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
# KEYS: all-jobs. ARGV: cursor id ('' = from the start), page size + 1, 'asc'|'desc', job key prefix.
_PAGE = """
local ascending = ARGV[3] == 'asc'
local start = 0
if ARGV[1] ~= '' then
  local rank
  if ascending then rank = redis.call('ZRANK', KEYS[1], ARGV[1]) else rank = redis.call('ZREVRANK', KEYS[1], ARGV[1]) end
  if rank == false then return {0} end
  start = rank + 1
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


class RedisJobStore(JobStore):
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX):
        self.client = client
        self.prefix = prefix
        self._all_key = f"{prefix}:jobs"
        self._leases_key = f"{prefix}:leases"
        self._status_keys = {status: f"{prefix}:status:{status.value}" for status in _STATUSES}
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)
        self._delete = client.register_script(_DELETE)
        self._oldest_claimable = client.register_script(_OLDEST_CLAIMABLE)
        self._page = client.register_script(_PAGE)

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

    def _write_keys(self, job_id: str) -> list[str]:
        return [self._job_key(job_id), self._all_key, self._leases_key, *self._status_keys.values()]

    def _write_if_unchanged(self, expected_json: str, job: JobRecord) -> bool:
        """Store ``job`` only if its stored JSON is still ``expected_json`` ('' = absent)."""
        in_progress = job.status is JobStatus.IN_PROGRESS
        lease_score = ("-inf" if job.lease_expires_at is None else repr(job.lease_expires_at)) if in_progress else ""
        arguments = [
            expected_json,
            job.model_dump_json(),
            job.id,
            repr(job.created_at),
            _STATUSES.index(job.status) + 1,
            lease_score,
        ]
        return self._compare_and_set(keys=self._write_keys(job.id), args=arguments) == 1

    def _read(self, job_id: str) -> tuple[str, JobRecord] | None:
        stored = self.client.get(self._job_key(job_id))
        return None if stored is None else (stored, JobRecord.model_validate_json(stored))

    def create(self, job: JobRecord) -> None:
        if not self._write_if_unchanged("", job):
            raise JobExistsError(job.id)

    def get(self, job_id: str) -> JobRecord | None:
        found = self._read(job_id)
        return None if found is None else found[1]

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        while True:  # lost a race to another writer: re-read and re-apply
            found = self._read(job_id)
            if found is None:
                return None
            stored, job = found
            changed = apply_changes(job, changes, time.time())
            if self._write_if_unchanged(stored, changed):
                return changed

    def delete(self, job_id: str) -> bool:
        return self._delete(keys=self._write_keys(job_id), args=[job_id]) == 1

    def list(
        self, *, after: str | None = None, limit: int = 20, order: ListOrder = "desc"
    ) -> tuple[list[JobRecord], bool]:
        check_page_request(limit, order)
        if after == "":  # '' means "no cursor" to the script; no job has an empty id
            raise KeyError("after: no job with id ''")
        found, *records = self._page(
            keys=[self._all_key], args=[after or "", limit + 1, order, self._job_key("")]
        )
        if found == 0:
            raise KeyError(f"after: no job with id {after!r}")
        page = [JobRecord.model_validate_json(record) for record in records[:limit]]
        return page, len(records) > limit

    def claim(self, owner: str, lease_seconds: float, now: float | None = None) -> JobRecord | None:
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
            taken = claimed(job, owner, lease_seconds, now)
            if self._write_if_unchanged(stored, taken):
                return taken

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
