"""The API process's memory of credentials it has checked in full, each with the tenant's auth epoch.

A remembered credential is still presented to the database on every request, in the round trip that
takes its rate limits, together with the epoch it was checked at; the database answers ``cached`` only
while the tenant's epoch is unchanged (migration 0012: every change to the tenant's users, keys or
revocations moves it in the same transaction). So the cache spares the lookups and the token's
signature check, never a revocation, disabling or role change: those apply to the next request in
every process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from lily.domain.access import Policy

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Checked:
    """What a full check of one credential found, and at which epoch of its tenant."""

    tenant_id: str
    kind: str  # "user" or "key"
    name: str  # user name or key id
    jti: str | None
    sid: str | None
    secret_hash: str | None
    claims: dict[str, Any]  # a JWT's verified claims ({} for a key)
    expires_at: float | None  # a JWT's exp (seconds since the epoch)
    epoch: int
    role: str
    groups: tuple[str, ...]
    key_name: str | None


class _Bounded(Generic[V]):
    """Bounded, insertion-ordered: when full, the oldest entries go first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._entries: dict[str, V] = {}

    def get(self, key: str) -> V | None:
        return self._entries.get(key)

    def put(self, key: str, entry: V) -> None:
        self._entries.pop(key, None)
        while len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = entry

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class CredentialCache(_Bounded[Checked]):
    """Keyed by the whole presented credential, so a key with a wrong secret or a re-signed token is
    never a hit; an expired token's entry is gone at its first look-up."""

    def get(self, credential: str) -> Checked | None:
        entry = self._entries.get(credential)
        if entry is None:
            return None
        if entry.expires_at is not None and time.time() >= entry.expires_at:
            del self._entries[credential]
            return None
        return entry


@dataclass(frozen=True, slots=True)
class TenantPolicies:
    """A tenant's access policies as one read found them, with the tenant's policy epoch in that read."""

    epoch: int
    policies: tuple[Policy, ...]


class PolicyCache(_Bounded[TenantPolicies]):
    """The access policies this process last read per tenant. Never trusted on its own: a write acted on
    under them is appended only while the tenant's policy epoch is still theirs (``lily_append_checked``),
    and anything they would refuse is read again first."""
