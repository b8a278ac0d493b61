"""Rate-limit tokens an API process holds in memory, leased from the shared buckets in PostgreSQL.

Every request takes one token of its principal's bucket and one of its tenant's. Taking them in the
database one at a time made every request of a key queue on that bucket's row (an advisory lock held to
commit): 32 connections of one key were served one after another. A process now takes up to
:attr:`TokenLeases.batch` tokens of a bucket at once (``lily_authenticate_lease``, migration 0014) and
spends them here, so the rows are touched about once per batch.

Tokens are never made up: every token spent was taken from the shared bucket first. The bound, across P
API processes: in any window a principal or a tenant is admitted at most P x batch requests more than
its bucket allows (the tokens the processes held when the window opened), and tokens a process leaves
unspent for ``ttl`` seconds are dropped (at most P x batch a bucket, never handed back). The batch is
``rate x lease_seconds`` tokens, at most :data:`MAX_BATCH` and at least one: a slow bucket (a few
requests a second) is taken one token at a time, exactly as before.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from lily.auth.limits import Bucket, RateLimits

# The most tokens of one bucket a process holds at once.
MAX_BATCH = 50


@dataclass(slots=True)
class _Held:
    tokens: int
    expires: float


def batch_of(bucket: Bucket, lease_seconds: float) -> int:
    """Tokens to lease at once: ``lease_seconds`` of the bucket's rate, within 1..MAX_BATCH and the bucket's size."""
    return max(1, min(MAX_BATCH, int(bucket.capacity), math.floor(bucket.rate * lease_seconds)))


class TokenLeases:
    """One process's unspent tokens, per (tenant, bucket); bounded like the credential cache."""

    def __init__(
        self,
        limits: RateLimits,
        *,
        lease_seconds: float = 0.05,
        ttl: float = 1.0,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self.principal_batch = batch_of(limits.per_principal, lease_seconds)
        self.tenant_batch = batch_of(limits.per_tenant, lease_seconds)
        self._held: dict[tuple[str, str], _Held] = {}
        # Buckets a batch is being leased for, each with the event set once that lease is answered.
        # Requests that find the bucket empty meanwhile do not lease a batch of their own (one process
        # would hold concurrency x batch tokens instead of one batch): they wait for it (take_waiting),
        # or ask for their own token only (take).
        self._leasing: dict[tuple[str, str], asyncio.Event] = {}

    def _tokens(self, key: tuple[str, str]) -> int:
        held = self._held.get(key)
        if held is None:
            return 0
        if self.clock() >= held.expires:
            del self._held[key]
            return 0
        return held.tokens

    def take(self, tenant_id: str, principal: str) -> tuple[int, int]:
        """Spend one held token of each bucket (whose limit is on) that has one; for each that has none,
        how many to ask the database for: ``(principal's, tenant's)``, ``(0, 0)`` when the request may
        go on without asking (a batch, or one while another request leases a batch of that bucket).
        Every call that asked for anything must be followed by :meth:`settle`, even when the ask failed."""
        wants = [0, 0]
        buckets = (
            ((tenant_id, principal), self.limits.per_principal, self.principal_batch),
            ((tenant_id, "tenant"), self.limits.per_tenant, self.tenant_batch),
        )
        for i, (key, bucket, batch) in enumerate(buckets):
            if bucket.rate <= 0:
                continue
            if self._tokens(key) > 0:
                self._held[key].tokens -= 1
            elif batch > 1 and key not in self._leasing:
                self._leasing[key] = asyncio.Event()
                wants[i] = batch
            else:
                wants[i] = 1
        return wants[0], wants[1]

    async def take_waiting(self, tenant_id: str, principal: str, timeout: float) -> tuple[int, int]:
        """:meth:`take`, but a request that finds a bucket empty while another request of this process
        leases a batch of it waits for that batch (at most ``timeout`` seconds in all) and spends from it.

        Asking for one token of its own instead costs the request the round trip the cached credential
        spares (and, for a write, the policies' read), and under load that undid itself: the more
        requests queued, the slower the lease came back, the more requests found the bucket empty and
        went to the database one by one, and the slower it got again. At 700 creates a second, offered
        for 10 s, the process's CPU per request doubled and the answers took seconds.
        """
        deadline: float | None = None
        while True:
            leases = [
                event
                for key in ((tenant_id, principal), (tenant_id, "tenant"))
                if (event := self._leasing.get(key)) is not None and self._tokens(key) == 0
            ]
            if not leases:
                return self.take(tenant_id, principal)
            loop = asyncio.get_running_loop()
            deadline = deadline if deadline is not None else loop.time() + timeout
            try:
                # The batch of the first; a second bucket's lease, if any, is looked at again in the loop.
                await asyncio.wait_for(leases[0].wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return self.take(tenant_id, principal)

    def keep(self, tenant_id: str, principal: str, principal_tokens: int, tenant_tokens: int) -> None:
        """Hold tokens granted (or given back) for later requests; dropped if unspent ``ttl`` seconds from now."""
        for key, granted in (((tenant_id, principal), principal_tokens), ((tenant_id, "tenant"), tenant_tokens)):
            if granted <= 0:
                continue
            tokens = self._tokens(key) + granted
            self._held.pop(key, None)
            while len(self._held) >= self.capacity:
                del self._held[next(iter(self._held))]
            self._held[key] = _Held(tokens, self.clock() + self.ttl)

    def settle(
        self, tenant_id: str, principal: str, wants: tuple[int, int], granted: tuple[int, int], admitted: bool
    ) -> None:
        """After the database answered a request that :meth:`take` sent there with ``wants``: hold what it
        ``granted``, less the token the request spends of each bucket asked when ``admitted``; a refused
        request gives back the tokens it took from this process. A failed ask (no answer): granted (0, 0)."""
        kept = []
        answered = []
        buckets = (((tenant_id, principal), self.limits.per_principal), ((tenant_id, "tenant"), self.limits.per_tenant))
        for want, got, (key, bucket) in zip(wants, granted, buckets, strict=True):
            if want > 1 and (event := self._leasing.pop(key, None)) is not None:  # this request leased the batch
                answered.append(event)
            if want:
                kept.append(got - 1 if admitted else got)
            else:
                kept.append(0 if admitted or bucket.rate <= 0 else 1)
        self.keep(tenant_id, principal, kept[0], kept[1])
        for event in answered:  # after keep: the requests it wakes find the batch held
            event.set()
