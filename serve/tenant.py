"""Who is asking: the tenant a request acts for, as the service sees it.

A tenant is the digest of its API key, never the key: the digest is what job records keep,
so a leaked database holds no key. Without API keys every request is one shared tenant.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from serve.jobs.store import SHARED_OWNER, JobRecord


@dataclass(frozen=True)
class Tenant:
    owner: str  # what jobs this tenant creates are recorded under
    is_admin: bool = False  # sees every tenant's jobs

    @classmethod
    def of_key(cls, key: bytes, is_admin: bool = False) -> Tenant:
        # A domain-separated digest, so it is not the same value as the key check's digest.
        return cls(owner="key_" + hashlib.sha256(b"videoserve-owner:" + key).hexdigest()[:32], is_admin=is_admin)

    def sees(self, record: JobRecord) -> bool:
        return self.is_admin or record.owner == self.owner

    @property
    def listing_owner(self) -> str | None:
        """The owner a listing is restricted to (None: everything, for an admin)."""
        return None if self.is_admin else self.owner


SHARED_TENANT = Tenant(owner=SHARED_OWNER)
