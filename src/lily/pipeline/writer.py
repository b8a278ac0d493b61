"""The accept side of the log: append events for a request, honour idempotency, wait for apply."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from lily.config import Settings
from lily.domain.errors import Conflict
from lily.domain.events import Accepted, NewEvent
from lily.pipeline.waiter import AppliedWaiter
from lily.pipeline.wake import LogWaker
from lily.store import idempotency
from lily.store import log as store_log
from lily.store.db import Database


def request_hash(method: str, path: str, body: Any) -> str:
    return hashlib.sha256(orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)).hexdigest()


class StaleCheck(Exception):
    """The credential or the policies a write was checked against moved before its append, which
    therefore did not happen: check the caller again and decide anew. Never reaches a client."""


@dataclass(frozen=True, slots=True)
class CheckedAt:
    """The epochs a caller was checked at without a round trip (its cached credential, and cached
    policies that bind it in nothing): the append confirms them (``lily_append_checked``)."""

    auth_epoch: int
    policy_epoch: int


@dataclass(slots=True)
class Submitted:
    event_id: str
    partition: int
    seq: int
    replayed: bool = False  # True when an idempotency key matched an earlier request
    heard_since: int | None = None  # the waiter's LISTEN session before the append (AppliedWaiter.listening)


class Writer:
    def __init__(self, db: Database, settings: Settings, waiter: AppliedWaiter) -> None:
        self.db = db
        self.settings = settings
        self.waiter = waiter
        self.waker = LogWaker(db)

    async def submit(
        self,
        event: NewEvent,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        checked: CheckedAt | None = None,
    ) -> Submitted:
        """Append one event; with an idempotency key, a repeat returns the first event instead. With
        ``checked``, only while those epochs hold (else :class:`StaleCheck`; not with a key)."""
        heard = self.waiter.listening()
        if not idempotency_key:
            async with self.db.alone(event.tenant_id) as conn:
                if checked is None:
                    accepted = await store_log.append_alone(conn, event, self.settings.partitions)
                else:
                    got = await store_log.append_checked(
                        conn,
                        event,
                        self.settings.partitions,
                        auth_epoch=checked.auth_epoch,
                        policy_epoch=checked.policy_epoch,
                    )
                    if got is None:
                        raise StaleCheck
                    accepted = got
            self.waker.wake(accepted.partition)  # committed: now the workers may look (lily.pipeline.wake)
            return Submitted(str(accepted.event_id), accepted.partition, accepted.seq, heard_since=heard)
        assert checked is None, "a keyed write is checked before it is appended"
        async with self.db.tenant(event.tenant_id) as conn:
            first = await idempotency.claim(
                conn, event.tenant_id, idempotency_key, fingerprint or "", {"event_id": str(event.event_id)}
            )
            if first is not None:
                if first["request_hash"] != fingerprint:
                    raise Conflict(
                        "this Idempotency-Key was used with a different request", idempotency_key=idempotency_key
                    )
                previous = await store_log.get_event(conn, event.tenant_id, first["response"]["event_id"])
                assert previous is not None
                return Submitted(str(previous["event_id"]), previous["partition"], previous["seq"], True)
            (accepted,) = await store_log.append(conn, [event], self.settings.partitions)
        return Submitted(str(accepted.event_id), accepted.partition, accepted.seq, heard_since=heard)

    async def append_many(self, tenant_id: str, events: list[NewEvent]) -> list[Accepted]:
        async with self.db.tenant(tenant_id) as conn:
            return await store_log.append(conn, events, self.settings.partitions)

    async def wait(self, submitted: Submitted, timeout: float | None = None) -> bool:
        return await self.waiter.wait(
            submitted.partition,
            submitted.seq,
            self.settings.write_wait_seconds if timeout is None else timeout,
            heard_since=submitted.heard_since,
        )
