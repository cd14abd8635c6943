"""Opening the job store a URL names: the one module that knows every backend.

The interface (store.py) knows none of them, and each backend imports the interface, so
this factory lives apart from both.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from serve.jobs.redis_store import RedisJobStore
from serve.jobs.sqlite_store import SqliteJobStore, sqlite_path_from_url
from serve.jobs.store import JobStore
from serve.secret_env import secret_from_env

ACCEPTED_URLS = "sqlite:///absolute/path/jobs.db, redis://host:port/db[?prefix=name] or rediss://..."


def open_job_store(url: str, password_env: str | None = None) -> JobStore:
    """The store a URL names: ``sqlite:///abs/path/jobs.db`` or ``redis://host:port/db?prefix=p``.

    ``password_env`` (``storage.job_store_password_env``) names the environment variable
    holding the Redis password; it is read here, when the store connects, so the password
    never appears in the URL or the config.
    """
    scheme = urlsplit(url).scheme if isinstance(url, str) else ""
    if scheme == "sqlite":
        if password_env is not None:
            raise ValueError(
                f"storage.job_store_password_env is set ({password_env}) but the job store is SQLite, which takes "
                "no password; unset it or point storage.job_store_url at Redis"
            )
        return SqliteJobStore(sqlite_path_from_url(url))
    if scheme in ("redis", "rediss"):
        password = None if password_env is None else secret_from_env(password_env, "storage.job_store_password_env")
        return RedisJobStore.from_url(url, password=password)
    raise ValueError(f"job store url {url!r} is not supported; use one of: {ACCEPTED_URLS}")
