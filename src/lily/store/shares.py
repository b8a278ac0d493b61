"""Fair shares of a process's pooled connections between tenants.

A tenant's transactions may hold at most ``share`` of the pool at once. Requests are short, so this
rarely binds; it does when one tenant sends many slow requests (large searches, bulk uploads, lineage
walks) at the same moment: then its own requests wait — briefly, and then answer 429 — while other
tenants still find free connections. A deployment-wide count is not what matters here: connections
are a resource of each process's pool, so each process keeps its own shares (bulk slots and request
rates, which are deployment-wide, are counted in PostgreSQL).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lily.domain.errors import TooManyRequests


class _Share:
    __slots__ = ("held", "semaphore", "users")

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.held = 0
        self.users = 0  # holders and waiters; the entry is dropped at zero, so idle tenants cost nothing


class TenantShares:
    def __init__(self, share: int, *, wait_seconds: float) -> None:
        self.share = max(1, share)
        self.wait_seconds = wait_seconds
        self._shares: dict[str, _Share] = {}

    def in_use(self, tenant_id: str) -> int:
        entry = self._shares.get(tenant_id)
        return 0 if entry is None else entry.held

    @asynccontextmanager
    async def hold(self, tenant_id: str) -> AsyncIterator[None]:
        entry = self._shares.get(tenant_id)
        if entry is None:
            entry = self._shares[tenant_id] = _Share(self.share)
        entry.users += 1
        try:
            try:
                if entry.semaphore.locked():
                    await asyncio.wait_for(entry.semaphore.acquire(), self.wait_seconds)
                else:
                    # Free (and nobody queued ahead): taken at once. wait_for would start a task for the
                    # acquire on every transaction, a measurable part of a point read's CPU.
                    await entry.semaphore.acquire()
            except TimeoutError:
                raise TooManyRequests(
                    f"this tenant already has {self.share} database connections of this server in use; retry shortly",
                    retry_after_seconds=1,
                ) from None
            entry.held += 1
            try:
                yield
            finally:
                entry.held -= 1
                entry.semaphore.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                self._shares.pop(tenant_id, None)
