"""The dead-letter queue in SQL: listing, claiming a letter for replay or discard, the "latest" check.

Letters are written by the consumer (:func:`lily.store.log.dead_letter`); everything here runs as the
tenant (row-level security), so one tenant's admin never sees or touches another's letters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from lily.store.db import Conn

_COLUMNS = (
    "d.event_id, d.partition, d.seq, d.subject, d.kind, d.error, d.attempts, d.dead_lettered_at, d.state,"
    " d.resolved_at, d.resolved_by, d.replayed_as, e.payload, e.actor, e.source, e.accepted_at, e.replay_of"
)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which letters: every field given must match. ``state`` None means any state."""

    state: str | None = "open"
    kind: str | None = None
    subject: str | None = None
    since: datetime | None = None  # dead-lettered at or after
    until: datetime | None = None  # dead-lettered before


def _where(tenant_id: str, f: Filter) -> tuple[list[str], list[Any]]:
    where: list[str] = ["d.tenant_id = %s"]
    params: list[Any] = [tenant_id]
    for clause, value in (
        ("d.state = %s", f.state),
        ("d.kind = %s", f.kind),
        ("d.subject = %s", f.subject),
        ("d.dead_lettered_at >= %s", f.since),
        ("d.dead_lettered_at < %s", f.until),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    return where, params


async def list_letters(
    conn: Conn, tenant_id: str, f: Filter, *, after: tuple[datetime, UUID] | None, limit: int
) -> list[dict[str, Any]]:
    """Letters oldest first, paged by (dead_lettered_at, event_id) strictly after ``after``."""
    where, params = _where(tenant_id, f)
    if after is not None:
        where.append("(d.dead_lettered_at, d.event_id) > (%s, %s)")
        params.extend(after)
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM dead_letters d JOIN events e USING (event_id)"
        f" WHERE {' AND '.join(where)} ORDER BY d.dead_lettered_at, d.event_id LIMIT %s",
        [*params, limit],
    )
    return await cur.fetchall()


async def get_letter(conn: Conn, tenant_id: str, event_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM dead_letters d JOIN events e USING (event_id)"
        " WHERE d.tenant_id = %s AND d.event_id = %s",
        [tenant_id, event_id],
    )
    return await cur.fetchone()


async def open_ids_in_log_order(conn: Conn, tenant_id: str, f: Filter, limit: int) -> list[UUID]:
    """Open letters matching ``f`` in log order, so a bulk replay re-appends them in their first order
    and takes partition locks in ascending order (as appenders do: no deadlock)."""
    where, params = _where(
        tenant_id, Filter(state="open", kind=f.kind, subject=f.subject, since=f.since, until=f.until)
    )
    cur = await conn.execute(
        f"SELECT d.event_id FROM dead_letters d WHERE {' AND '.join(where)} ORDER BY d.partition, d.seq LIMIT %s",
        [*params, limit],
    )
    return [row["event_id"] for row in await cur.fetchall()]


async def claim_open(conn: Conn, tenant_id: str, event_id: UUID, state: str, actor: str) -> dict[str, Any] | None:
    """Move an open letter to ``state`` (replayed or discarded); None if it is not open (any more).

    The row lock this takes serialises two admins acting on one letter: the second finds it resolved.
    """
    cur = await conn.execute(
        "UPDATE dead_letters SET state = %s, resolved_at = clock_timestamp(), resolved_by = %s"
        " WHERE tenant_id = %s AND event_id = %s AND state = 'open'"
        " RETURNING event_id, partition, seq, subject, kind",
        [state, actor, tenant_id, event_id],
    )
    return await cur.fetchone()


async def lock_partition_head(conn: Conn, partition: int) -> None:
    """Hold the partition's append lock to commit: no event of its subjects can be accepted meanwhile,
    so a "still the latest" check made now stays true until the replay is appended."""
    await conn.execute("SELECT 1 FROM log_heads WHERE partition = %s FOR UPDATE", [partition])


async def newer_event(conn: Conn, tenant_id: str, subject: str, seq: int) -> dict[str, Any] | None:
    """The first event of ``subject`` accepted after ``seq`` that could have changed it, if any.

    Events the pipeline rejected (status failed) changed nothing, so they do not make a letter stale.
    One subject lives in one partition, so its events' seqs are comparable.
    """
    cur = await conn.execute(
        "SELECT event_id, seq, status, accepted_at FROM events"
        " WHERE tenant_id = %s AND subject = %s AND seq > %s AND status <> 'failed'"
        " ORDER BY seq LIMIT 1",
        [tenant_id, subject, seq],
    )
    return await cur.fetchone()


async def set_replayed_as(conn: Conn, tenant_id: str, event_id: UUID, replay_id: UUID) -> None:
    await conn.execute(
        "UPDATE dead_letters SET replayed_as = %s WHERE tenant_id = %s AND event_id = %s",
        [replay_id, tenant_id, event_id],
    )
    await conn.execute(
        "UPDATE events SET replay_of = %s WHERE tenant_id = %s AND event_id = %s",
        [event_id, tenant_id, replay_id],
    )


async def exists(conn: Conn, tenant_id: str, event_id: UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM dead_letters WHERE tenant_id = %s AND event_id = %s", [tenant_id, event_id])
    return await cur.fetchone() is not None
