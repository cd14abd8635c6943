"""Both JobStore backends, against real SQLite files and a real redis-server, by one suite."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import uuid
from pathlib import Path

import pydantic
import pytest

from serve.jobs.open_store import open_job_store
from serve.jobs.store import JobExistsError, JobRecord, JobStatus, JobStore, TERMINAL_STATUSES
from tests.support.repo import REPO_ROOT, run_python
from tests.support.redis_server import redis_server, running_redis_server  # noqa: F401

T0 = 1_712_345_678.123456  # sub-microsecond digits catch any float rounding on the way


def make_job(job_id: str, created_at: float = T0, **fields) -> JobRecord:
    return JobRecord(**{"id": job_id, "model": "tiny", "created_at": created_at, "updated_at": created_at, **fields})


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/jobs.db"
    # One server for the session; a fresh key prefix keeps each test's jobs apart.
    server = request.getfixturevalue("redis_server")
    return f"{server.url}?prefix=test-{uuid.uuid4().hex}"


@pytest.fixture
def store(store_url):
    with open_job_store(store_url) as job_store:
        yield job_store


def ids(jobs: list[JobRecord]) -> list[str]:
    return [job.id for job in jobs]


# --- records --------------------------------------------------------------------------


def test_create_then_get_returns_every_field_unchanged(store: JobStore):
    job = make_job(
        "video_full",
        status=JobStatus.IN_PROGRESS,
        updated_at=T0 + 1.5,
        completed_at=None,
        params={"prompt": "a cat surfing ☀", "size": [832, 480], "empty": [], "guidance": 5.0, "nested": {"a": None}},
        input_image_path="/data/inputs/video_full.png",
        webhook_url="https://hooks.example.com/videos",
        progress=42,
        stage="denoise",
        step=21,
        total_steps=50,
        seed=2**40 + 7,
        error_code="stage_retry",
        error_message="vae replica restarted",
        attempts=2,
        cancel_requested=True,
        lease_owner="orchestrator-1",
        lease_expires_at=T0 + 30.000001,
        artifacts={"mp4": "/data/artifacts/video_full.mp4", "thumbnail": "/data/artifacts/video_full.webp"},
        metadata={"client": "tests", "priority": 3},
    )
    store.create(job)
    assert store.get("video_full") == job
    assert store.get("video_missing") is None


def test_duplicate_id_is_refused_and_keeps_the_first(store: JobStore):
    store.create(make_job("video_a"))
    with pytest.raises(JobExistsError):
        store.create(make_job("video_a", created_at=T0 + 5, params={"prompt": "other"}))
    assert store.get("video_a") == make_job("video_a")


def test_records_refuse_values_json_cannot_carry():
    with pytest.raises(pydantic.ValidationError, match="params"):
        make_job("video_bytes", params={"image": b"\x89PNG"})
    with pytest.raises(pydantic.ValidationError, match="metadata"):
        make_job("video_nan", metadata={"score": float("nan")})
    with pytest.raises(pydantic.ValidationError, match="unknown_field"):
        make_job("video_extra", unknown_field=1)


def test_new_job_is_queued_with_a_fresh_video_id():
    first, second = JobRecord.new(model="tiny", now=T0), JobRecord.new(model="tiny", now=T0)
    assert first.id.startswith("video_") and first.id != second.id
    assert (first.status, first.created_at, first.updated_at, first.attempts) == (JobStatus.QUEUED, T0, T0, 0)


# --- durability -----------------------------------------------------------------------


def test_a_new_store_instance_sees_what_the_first_wrote(store_url: str):
    with open_job_store(store_url) as first:
        first.create(make_job("video_a", params={"prompt": "x"}))
        first.update("video_a", progress=10)
    with open_job_store(store_url) as second:
        job = second.get("video_a")
    assert job is not None and job.progress == 10 and job.params == {"prompt": "x"}


def test_create_is_durable_even_if_the_writer_is_killed_right_after(store_url: str):
    code = (
        "import os, signal\n"
        "from serve.jobs.store import JobRecord\nfrom serve.jobs.open_store import open_job_store\n"
        f"store = open_job_store({store_url!r})\n"
        f"store.create(JobRecord(id='video_killed', model='tiny', created_at={T0!r}, updated_at={T0!r}))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = run_python(code, timeout=60)
    assert result.returncode == -9, result.stderr
    with open_job_store(store_url) as store:
        assert store.get("video_killed") == make_job("video_killed")


def test_redis_jobs_survive_a_redis_restart(tmp_path: Path):
    server_dir = tmp_path / "redis"
    with running_redis_server(server_dir, appendfsync="always") as server:
        with open_job_store(f"{server.url}?prefix=restart") as store:
            store.create(make_job("video_a"))
            store.create(make_job("video_b", created_at=T0 + 1))
            store.claim("worker-1", 60, now=T0)
    with running_redis_server(server_dir) as server:
        with open_job_store(f"{server.url}?prefix=restart") as store:
            assert store.get("video_a").lease_owner == "worker-1"
            assert store.queued_ahead("video_b") == 0
            assert store.count_by_status()[JobStatus.IN_PROGRESS] == 1
            assert store.claim("worker-2", 60, now=T0).id == "video_b"


# --- update / delete ------------------------------------------------------------------


def test_update_changes_only_the_given_fields(store: JobStore):
    store.create(make_job("video_a", params={"prompt": "x"}, seed=7))
    updated = store.update("video_a", progress=40, stage="denoise", step=20, total_steps=50)
    assert (updated.progress, updated.stage, updated.step, updated.total_steps) == (40, "denoise", 20, 50)
    assert (updated.params, updated.seed, updated.status, updated.created_at) == ({"prompt": "x"}, 7, JobStatus.QUEUED, T0)
    assert updated.updated_at > T0
    assert store.get("video_a") == updated
    assert store.update("video_missing", progress=1) is None


def test_update_refuses_unknown_fields_and_invalid_values(store: JobStore):
    store.create(make_job("video_a"))
    with pytest.raises(ValueError, match="progres"):
        store.update("video_a", progres=50)
    with pytest.raises(pydantic.ValidationError, match="progress"):
        store.update("video_a", progress=101)
    with pytest.raises(pydantic.ValidationError, match="status"):
        store.update("video_a", status="exploded")
    with pytest.raises(ValueError, match="id"):
        store.update("video_a", id="video_b")
    assert store.get("video_a") == make_job("video_a")


def test_moving_to_a_terminal_status_stamps_completed_at(store: JobStore):
    store.create(make_job("video_a"))
    store.create(make_job("video_b"))
    done = store.update("video_a", status="completed", progress=100, artifacts={"mp4": "/a.mp4"})
    assert done.status is JobStatus.COMPLETED and done.completed_at == done.updated_at
    failed = store.update("video_b", status=JobStatus.FAILED, completed_at=T0 + 9, error_code="oom")
    assert (failed.completed_at, failed.error_code) == (T0 + 9, "oom")


def test_delete_removes_the_job_everywhere(store: JobStore):
    store.create(make_job("video_a"))
    store.create(make_job("video_b", created_at=T0 + 1))
    assert store.delete("video_a") is True
    assert store.delete("video_a") is False
    assert store.get("video_a") is None
    assert ids(store.list()[0]) == ["video_b"]
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    assert store.queued_ahead("video_b") == 0
    assert store.claim("worker", 60).id == "video_b"
    assert store.claim("worker", 60) is None


# --- listing --------------------------------------------------------------------------


@pytest.fixture
def five_jobs(store: JobStore) -> list[str]:
    """Created out of order, two sharing a created_at: the expected (created_at, id) order."""
    for job_id, created_at in [("video_d", T0 + 3), ("video_b", T0 + 1), ("video_e", T0 + 4), ("video_c2", T0 + 1), ("video_a", T0)]:
        store.create(make_job(job_id, created_at=created_at))
    return ["video_a", "video_b", "video_c2", "video_d", "video_e"]


def test_list_pages_forwards_with_has_more(store: JobStore, five_jobs: list[str]):
    pages = [store.list(limit=2, order="asc")]
    while pages[-1][1]:
        pages.append(store.list(after=pages[-1][0][-1].id, limit=2, order="asc"))
    assert [(ids(page), more) for page, more in pages] == [
        (five_jobs[0:2], True),
        (five_jobs[2:4], True),
        (five_jobs[4:], False),
    ]


def test_list_pages_backwards_by_default(store: JobStore, five_jobs: list[str]):
    newest_first = five_jobs[::-1]
    page, more = store.list(limit=3)
    assert (ids(page), more) == (newest_first[:3], True)
    page, more = store.list(after=page[-1].id, limit=3)
    assert (ids(page), more) == (newest_first[3:], False)
    assert store.list(after="video_a", order="desc") == ([], False)
    assert store.list(limit=5, order="asc") == (store.list(limit=5)[0][::-1], False)


def test_list_refuses_an_unknown_cursor_and_bad_arguments(store: JobStore, five_jobs: list[str]):
    with pytest.raises(KeyError, match="video_nope"):
        store.list(after="video_nope")
    with pytest.raises(KeyError):
        store.list(after="")
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=-1)
    assert store.list(limit=0) == ([], True)  # OpenAI's limit=0: no items, has_more still says
    with pytest.raises(ValueError, match="order"):
        store.list(order="sideways")


# --- claiming -------------------------------------------------------------------------


def test_claim_takes_jobs_oldest_first_and_leases_them(store: JobStore, five_jobs: list[str]):
    claimed = []
    while (job := store.claim("worker-1", 30, now=T0 + 100)) is not None:
        claimed.append(job)
    assert ids(claimed) == five_jobs
    for job in claimed:
        assert (job.status, job.lease_owner, job.lease_expires_at, job.attempts) == (
            JobStatus.IN_PROGRESS, "worker-1", T0 + 130, 1,
        )  # fmt: skip
        assert store.get(job.id) == job


def test_claim_skips_live_leases_and_finished_jobs(store: JobStore):
    for offset, status in enumerate(sorted(TERMINAL_STATUSES)):
        store.create(make_job(f"video_done_{status.value}", created_at=T0 + offset, status=status))
    store.create(make_job("video_live", created_at=T0 + 5))
    store.create(make_job("video_next", created_at=T0 + 6))
    assert store.claim("worker-1", 60, now=T0 + 10).id == "video_live"
    assert store.claim("worker-2", 60, now=T0 + 69).id == "video_next"
    assert store.claim("worker-3", 60, now=T0 + 69) is None


def test_an_expired_lease_is_reclaimed_by_another_worker(store: JobStore):
    store.create(make_job("video_a"))
    first = store.claim("worker-1", 10, now=T0 + 100)
    assert store.claim("worker-2", 10, now=T0 + 109) is None
    second = store.claim("worker-2", 10, now=T0 + 110.5)
    assert (second.id, second.lease_owner, second.attempts, second.lease_expires_at) == (
        first.id, "worker-2", 2, T0 + 120.5,
    )  # fmt: skip
    assert store.renew("video_a", "worker-1", 10, now=T0 + 111) is False
    assert store.renew("video_a", "worker-2", 10, now=T0 + 115) is True
    assert store.get("video_a").lease_expires_at == T0 + 125
    assert store.claim("worker-3", 10, now=T0 + 121) is None


def test_renew_keeps_a_lease_alive_and_stops_once_the_job_is_finished(store: JobStore):
    store.create(make_job("video_a"))
    store.claim("worker-1", 10, now=T0)
    assert store.renew("video_a", "worker-1", 10, now=T0 + 8) is True
    assert store.claim("worker-2", 10, now=T0 + 12) is None
    store.update("video_a", status="cancelled")
    assert store.renew("video_a", "worker-1", 10, now=T0 + 13) is False
    assert store.renew("video_missing", "worker-1", 10) is False


def test_release_hands_an_unfinished_job_back_at_once(store: JobStore):
    store.create(make_job("video_a"))
    store.claim("worker-1", 600, now=T0)
    store.release("video_a", "worker-2")  # not the holder: nothing changes
    assert store.get("video_a").lease_owner == "worker-1"
    store.release("video_a", "worker-1")
    released = store.get("video_a")
    assert (released.status, released.lease_owner, released.lease_expires_at) == (JobStatus.IN_PROGRESS, None, None)
    retaken = store.claim("worker-2", 600, now=T0 + 1)
    assert (retaken.id, retaken.lease_owner, retaken.attempts) == ("video_a", "worker-2", 2)


def test_claim_refuses_bad_lease_arguments(store: JobStore):
    with pytest.raises(ValueError, match="lease_seconds"):
        store.claim("worker-1", 0)
    with pytest.raises(ValueError, match="owner"):
        store.claim("", 10)


# --- queue position and counts ----------------------------------------------------------


def test_queued_ahead_counts_older_queued_jobs_only(store: JobStore, five_jobs: list[str]):
    assert [store.queued_ahead(job_id) for job_id in five_jobs] == [0, 1, 2, 3, 4]
    store.claim("worker-1", 60, now=T0)  # video_a leaves the queue
    store.update("video_c2", status="cancelled")
    assert [store.queued_ahead(job_id) for job_id in five_jobs] == [0, 0, 0, 1, 2]
    assert store.queued_ahead("video_missing") == 0


def test_count_by_status_lists_every_status(store: JobStore):
    assert store.count_by_status() == dict.fromkeys(JobStatus, 0)
    for index in range(3):
        store.create(make_job(f"video_q{index}", created_at=T0 + index))
    store.create(make_job("video_f", status=JobStatus.FAILED))
    store.claim("worker-1", 60)
    assert store.count_by_status() == {
        JobStatus.QUEUED: 2,
        JobStatus.IN_PROGRESS: 1,
        JobStatus.COMPLETED: 0,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }


# --- concurrency ----------------------------------------------------------------------


def test_threads_claiming_together_get_every_job_exactly_once(store: JobStore):
    all_ids = [f"video_{index:03d}" for index in range(48)]
    for index, job_id in enumerate(all_ids):
        store.create(make_job(job_id, created_at=T0 + index))
    start = threading.Barrier(6)

    def worker(owner: str) -> list[str]:
        start.wait()
        mine = []
        while (job := store.claim(owner, 600)) is not None:
            mine.append(job.id)
        return mine

    # map() re-raises a worker's exception here, so a claimer that crashed fails the test.
    with ThreadPoolExecutor(max_workers=6) as pool:
        claimed = list(pool.map(worker, [f"worker-{n}" for n in range(6)]))
    everything = [job_id for mine in claimed for job_id in mine]
    assert sorted(everything) == all_ids
    assert {store.get(job_id).attempts for job_id in all_ids} == {1}
    assert all(mine == sorted(mine) for mine in claimed)  # each worker saw FIFO order


_CLAIMING_PROCESS = """
import json, pathlib, sys, time
from serve.jobs.open_store import open_job_store
url, owner, ready, go = sys.argv[1:5]
store = open_job_store(url)
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.002)
claimed = []
while (job := store.claim(owner, 600)) is not None:
    claimed.append(job.id)
print(json.dumps(claimed))
"""


def test_two_processes_share_one_sqlite_file_without_double_claims(tmp_path: Path):
    url = f"sqlite://{tmp_path}/shared/jobs.db"
    all_ids = [f"video_{index:03d}" for index in range(60)]
    with open_job_store(url) as store:
        for index, job_id in enumerate(all_ids):
            store.create(make_job(job_id, created_at=T0 + index))
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMING_PROCESS, url, f"process-{n}", str(tmp_path / f"ready-{n}"), str(go)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    deadline = time.monotonic() + 60  # only so a broken child fails the test instead of hanging it
    while not all((tmp_path / f"ready-{n}").exists() for n in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "claimers did not start"
        time.sleep(0.01)
    go.touch()
    results = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [stderr for _, stderr in results]
    everything = [job_id for stdout, _ in results for job_id in json.loads(stdout)]
    assert sorted(everything) == all_ids
    with open_job_store(url) as store:
        assert {store.get(job_id).attempts for job_id in all_ids} == {1}
        assert store.count_by_status()[JobStatus.IN_PROGRESS] == 60


# --- urls -----------------------------------------------------------------------------


def test_sqlite_url_creates_parent_directories(tmp_path: Path):
    for url in (f"sqlite://{tmp_path}/a/b/jobs.db", f"sqlite:///{tmp_path}/c/jobs.db"):
        with open_job_store(url) as store:
            store.create(make_job("video_a"))
    assert (tmp_path / "a" / "b" / "jobs.db").is_file() and (tmp_path / "c" / "jobs.db").is_file()


def test_redis_prefixes_keep_stores_apart(redis_server):  # noqa: F811
    with open_job_store(f"{redis_server.url}?prefix=left") as left, open_job_store(
        f"{redis_server.url}?prefix=right"
    ) as right:
        left.create(make_job("video_a"))
        assert right.get("video_a") is None and right.claim("worker", 60) is None
        assert sum(left.count_by_status().values()) == 1
        left.delete("video_a")


@pytest.mark.parametrize(
    "url, message",
    [
        ("postgres://db/jobs", "sqlite:///"),
        ("jobs.db", "redis://"),
        ("sqlite://relative/jobs.db", "absolute"),
        ("sqlite:///tmp/jobs.db?mode=ro", "absolute"),
        ("redis://127.0.0.1:6379/0?prefix=", "prefix"),
        ("redis://127.0.0.1:6379/0?prefix=a&prefix=b", "prefix"),
    ],
)
def test_bad_urls_are_refused_with_the_accepted_forms(url: str, message: str):
    with pytest.raises(ValueError, match=message) as error:
        open_job_store(url)
    assert url in str(error.value) or "prefix" in str(error.value)


def test_an_unreachable_redis_fails_fast_naming_it():
    with pytest.raises(ConnectionError, match="127.0.0.1:1"):
        open_job_store("redis://127.0.0.1:1/0")


# --- the Redis password, from the environment variable the config names ------------------

REDIS_PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "VIDEOSERVE_TEST_REDIS_PASSWORD"


@pytest.fixture(scope="module")
def redis_with_password(tmp_path_factory):
    with running_redis_server(tmp_path_factory.mktemp("redis-auth"), appendonly=False, password=REDIS_PASSWORD) as server:
        yield server


def test_the_redis_store_authenticates_with_the_password_from_the_env_var(redis_with_password, monkeypatch):
    from serve.app_config import AppConfig

    monkeypatch.setenv(PASSWORD_ENV, REDIS_PASSWORD)
    # As the ingress opens it: the URL and the variable's name from the config, the password from the environment.
    config = AppConfig(storage={"job_store_url": f"{redis_with_password.url}?prefix=auth",
                                "job_store_password_env": PASSWORD_ENV})
    assert REDIS_PASSWORD not in config.model_dump_json()
    with open_job_store(config.storage.resolved_job_store_url(), config.storage.job_store_password_env) as store:
        store.create(make_job("video_auth"))
        assert store.claim("worker", 60).id == "video_auth"  # the Lua scripts run authenticated too
        assert store.count_by_status()[JobStatus.IN_PROGRESS] == 1
        assert store.delete("video_auth")


def test_a_redis_that_wants_a_password_fails_clearly_without_it(redis_with_password):
    with pytest.raises(ConnectionError, match="refused to authenticate \\(no password was given") as error:
        open_job_store(redis_with_password.url)
    assert f"127.0.0.1:{redis_with_password.port}" in str(error.value)
    assert "job_store_password_env" in str(error.value)


def test_a_wrong_password_is_refused_and_not_echoed(redis_with_password, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "not the password")
    with pytest.raises(ConnectionError, match="the password given was refused") as error:
        open_job_store(redis_with_password.url, password_env=PASSWORD_ENV)
    assert "not the password" not in str(error.value)


@pytest.mark.parametrize("value", [None, "", "  "], ids=["unset", "empty", "blank"])
def test_a_named_but_missing_password_variable_stops_start_up_naming_it(redis_with_password, monkeypatch, value):
    from serve.secret_env import MissingSecretError

    if value is None:
        monkeypatch.delenv(PASSWORD_ENV, raising=False)
    else:
        monkeypatch.setenv(PASSWORD_ENV, value)
    with pytest.raises(MissingSecretError, match=f"storage.job_store_password_env names the environment variable "
                                                 f"{PASSWORD_ENV}, but {PASSWORD_ENV} is (not set|empty)"):
        open_job_store(redis_with_password.url, password_env=PASSWORD_ENV)


def test_a_password_twice_or_for_sqlite_is_refused(redis_with_password, monkeypatch, tmp_path):
    monkeypatch.setenv(PASSWORD_ENV, REDIS_PASSWORD)
    url_with_password = redis_with_password.url.replace("redis://", f"redis://:{REDIS_PASSWORD.replace(' ', '%20')}@")
    with pytest.raises(ValueError, match="keep only one"):
        open_job_store(url_with_password, password_env=PASSWORD_ENV)
    with pytest.raises(ValueError, match="SQLite, which takes no password"):
        open_job_store(f"sqlite:///{tmp_path}/jobs.db", password_env=PASSWORD_ENV)


# --- tenancy, admission, fencing, retention, outbox (issue 13) -----------------------


def test_listing_by_owner_shows_only_that_owners_jobs(store: JobStore):
    for n, owner in enumerate(["alice", "bob", "alice", "bob", "alice"]):
        store.create(make_job(f"video_{n}", created_at=T0 + n, owner=owner))
    assert ids(store.list(owner="alice", order="asc")[0]) == ["video_0", "video_2", "video_4"]
    assert ids(store.list(owner="bob", after="video_1", order="asc")[0]) == ["video_3"]
    assert len(store.list()[0]) == 5  # no owner: everything (the admin's view)
    with pytest.raises(KeyError):  # another owner's id is no cursor for bob
        store.list(owner="bob", after="video_2")
    with pytest.raises(ValueError, match="owner"):
        store.update("video_0", owner="bob")


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_deleted_cursor_still_pages_from_its_place(store: JobStore, order: str):
    for n in range(6):
        store.create(make_job(f"video_{n}", created_at=T0 + n // 2))  # pairs share a created_at
    first, _ = store.list(limit=3, order=order)
    rest_before, _ = store.list(after=first[-1].id, order=order)
    assert store.delete(first[-1].id)
    rest_after, _ = store.list(after=first[-1].id, order=order)
    assert ids(rest_after) == ids(rest_before)
    with pytest.raises(KeyError):
        store.list(after=first[-1].id, owner="someone-else")


def test_concurrent_creates_never_overshoot_the_queue_bounds(store: JobStore):
    from serve.jobs.store import Admission, QueueFull

    admission = Admission(max_queued=7, max_queued_per_owner=4)

    def create(n: int) -> str:
        try:
            store.create(make_job(f"video_{n:03d}", created_at=T0 + n, owner=f"owner{n % 2}"), admission)
            return "ok"
        except QueueFull as full:
            return full.scope

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(create, range(40)))
    assert outcomes.count("ok") == 7
    assert store.count_queued() == 7
    assert sorted(store.count_queued(f"owner{n}") for n in (0, 1)) == [3, 4]
    store.claim("worker", 30)  # one leaves the queue: one more fits
    store.create(make_job("video_late", created_at=T0 + 99, owner="owner9"), admission)


def test_fenced_updates_refuse_a_worker_that_lost_its_lease(store: JobStore):
    from serve.jobs.store import LeaseLost

    store.create(make_job("video_a"))
    store.claim("worker-1", 1, now=T0)
    assert store.update("video_a", fence="worker-1", progress=10).progress == 10
    store.claim("worker-2", 30, now=T0 + 5)  # worker-1's lease expired: worker-2 took the job
    with pytest.raises(LeaseLost):
        store.update("video_a", fence="worker-1", status=JobStatus.COMPLETED)
    assert store.get("video_a").status is JobStatus.IN_PROGRESS and store.get("video_a").progress == 10
    store.update("video_a", fence="worker-2", status=JobStatus.COMPLETED)
    with pytest.raises(LeaseLost):  # ended: no fenced write completes it again
        store.update("video_a", fence="worker-2", status=JobStatus.COMPLETED)


def test_attempts_count_at_claim_and_a_job_that_kills_its_worker_ends_failed(store: JobStore):
    store.create(make_job("video_poison", webhook_url="https://hooks.example.com/x"))
    store.create(make_job("video_next", created_at=T0 + 1))
    now = T0
    for attempt in (1, 2):  # the worker dies each time: its lease just expires
        job = store.claim(f"worker-{attempt}", 1, now=now, max_attempts=2)
        assert job.id == "video_poison" and job.attempts == attempt
        now += 10
    taken = store.claim("worker-3", 1, now=now, max_attempts=2)
    assert taken.id == "video_next"  # the poison job was ended on the way
    failed = store.get("video_poison")
    assert failed.status is JobStatus.FAILED and failed.error_code == "worker_died"
    assert failed.webhook_outbox.type == "video.failed" and failed.webhook_outbox.state == "pending"


def test_the_webhook_outbox_is_taken_by_one_deliverer_until_its_lease_ends(store: JobStore):
    from serve.jobs.store import WebhookOutbox

    store.create(make_job("video_a", status=JobStatus.COMPLETED, webhook_outbox=WebhookOutbox.new("video.completed", T0)))
    store.create(make_job("video_b", created_at=T0 + 1, status=JobStatus.COMPLETED))
    assert store.claim_webhook("d1", 10, now=T0 - 1) is None  # not due yet
    taken = store.claim_webhook("d1", 10, now=T0 + 1)
    assert taken.id == "video_a" and taken.webhook_outbox.next_attempt_at == T0 + 11
    assert store.claim_webhook("d2", 10, now=T0 + 2) is None  # d1 holds it
    again = store.claim_webhook("d2", 10, now=T0 + 12)  # d1 died: due again, same message id
    assert again.webhook_outbox.message_id == taken.webhook_outbox.message_id
    store.update("video_a", webhook_outbox=again.webhook_outbox.model_copy(update={"state": "delivered"}))
    assert store.claim_webhook("d2", 10, now=T0 + 1000) is None


def test_the_sweeper_deletes_expired_jobs_only(store: JobStore):
    store.create(make_job("video_old", status=JobStatus.COMPLETED, expires_at=T0 + 10))
    store.create(make_job("video_new", created_at=T0 + 1, status=JobStatus.COMPLETED, expires_at=T0 + 1000))
    store.create(make_job("video_running", created_at=T0 + 2, status=JobStatus.IN_PROGRESS))
    assert store.sweep_expired(now=T0 + 5) == []
    assert store.sweep_expired(now=T0 + 20) == ["video_old"]
    assert store.get("video_old") is None and store.get("video_new") is not None
    assert store.list(after="video_old", order="asc")[0][0].id == "video_new"  # its cursor still works


def test_a_version_1_sqlite_file_is_migrated_in_place(tmp_path: Path):
    import sqlite3

    path = tmp_path / "v1.db"
    record = make_job("video_v1").model_dump(exclude={"owner", "expires_at", "webhook_outbox"})
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,"
                           " lease_expires_at REAL, record TEXT NOT NULL)")
        connection.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)",
                           ("video_v1", "queued", T0, None, json.dumps(record)))
        connection.execute("PRAGMA user_version=1")
    with open_job_store(f"sqlite://{path}") as store:
        assert store.get("video_v1").owner == "shared"
        assert ids(store.list(owner="shared")[0]) == ["video_v1"]
        assert store.count_queued("shared") == 1


# --- outages ----------------------------------------------------------------------------


def _redis_store_without_client_retries(url: str):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from serve.jobs.redis_store import RedisJobStore, split_prefix

    client_url, prefix = split_prefix(url)
    # redis-py retries an outage for seconds by default; none here, so the test sees the outage at once.
    return RedisJobStore(redis.Redis.from_url(client_url, decode_responses=True, retry=Retry(NoBackoff(), 0)), prefix)


def test_a_redis_that_goes_away_is_job_store_unavailable_for_every_operation(tmp_path):
    from serve.jobs.store import JobStoreUnavailable

    with running_redis_server(tmp_path / "redis") as server:
        store = _redis_store_without_client_retries(server.url)
        store.create(make_job("video_before"))
    # The server is stopped: every call says so in the store's own terms, not redis-py's.
    calls = {
        "get": lambda: store.get("video_before"),
        "create": lambda: store.create(make_job("video_after")),
        "update": lambda: store.update("video_before", progress=3),
        "claim": lambda: store.claim("runner-a", 30),
        "list": lambda: store.list(),
        "count_by_status": store.count_by_status,
        "renew": lambda: store.renew("video_before", "runner-a", 30),
    }
    for name, call in calls.items():
        with pytest.raises(JobStoreUnavailable):
            call()
    store.close()


def test_a_create_whose_reply_was_lost_is_not_a_duplicate_when_the_client_retries(redis_server):  # noqa: F811
    # redis-py re-sends a command whose connection dropped after the server ran it: the
    # second run of the create finds the first's record, which is the same one.
    store = _redis_store_without_client_retries(f"{redis_server.url}?prefix=test-{uuid.uuid4().hex}")
    job = make_job("video_once")
    assert store._write_if_unchanged("", job)  # the first run, whose reply the client never saw
    store.create(job)
    assert store.get("video_once") == job
    with pytest.raises(JobExistsError):
        store.create(make_job("video_once", created_at=T0 + 1))  # another job with that id still is one
    store.close()
