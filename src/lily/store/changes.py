"""Change events in SQL: written with the change, read in commit order, pruned by age.

Commit order without skipping a late commit (the reasoning, in full, heads migration 0009): a row's
position is (xid, seq) — the writing transaction's id, then the row's number — and a reader serves only
rows whose xid is below the horizon: the snapshot's xmin (``pg_snapshot_xmin(pg_current_snapshot())``),
counting only this database's transactions (``lily_change_horizon()``). Every transaction below that
line has ended, so every row it wrote is visible to this very snapshot (computed in the same statement)
and no row can ever again appear at a position the reader has passed. Rows of a transaction still
running (or of any transaction after the oldest one still running) wait for a later read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lily.domain.changes import ChangeEvent
from lily.store.db import Conn, insert_rows

NOTIFY_CHANNEL = "lily_changes"  # payload: a tenant id; sent by migration 0009's trigger at commit

_COLUMNS = (
    "tenant_id",
    "id",
    "type",
    "asset_id",
    "qualified_name",
    "version",
    "changes",
    "actor",
    "occurred_at",
    "origin",
)
_TYPES = ("text", "uuid", "text", "uuid", "text", "int4", "jsonb", "text", "timestamptz", "jsonb")

# A position in the feed: (xid, seq). xid8 travels as text (psycopg has no xid8 adapter).
Position = tuple[int, int]


async def insert(conn: Conn, events: Sequence[ChangeEvent]) -> None:
    """Write change events (of any tenants the connection's role may write) in one statement."""
    await insert_rows(
        conn,
        "change_events",
        _COLUMNS,
        _TYPES,
        [
            (
                e.tenant_id,
                e.id,
                e.type,
                e.asset_id,
                e.qualified_name,
                e.version,
                e.changes,
                e.actor,
                e.occurred_at,
                e.origin,
            )
            for e in events
        ],
    )


_FEED_COLUMNS = (
    "c.xid::text::bigint AS xid, c.seq, c.id, c.type, c.tenant_id, c.asset_id, c.qualified_name, c.version,"
    " c.changes, c.actor, c.occurred_at, c.origin"
)


async def feed(
    conn: Conn,
    tenant_id: str,
    after: Position,
    *,
    like: Sequence[str] | None,
    limit: int,
) -> tuple[int, int, list[dict[str, Any]]]:
    """(horizon, xmax, rows): the tenant's change events after ``after`` in commit order, only those below
    the horizon — ``lily_change_horizon()`` of the snapshot this one statement reads with (migration
    0009), so no later commit can come before them — and of assets the caller may read (the join to
    ``assets`` goes through its row-level security, access policies included; an event about no asset
    is always shown). ``xmax``: the snapshot's, the first transaction id not yet given out.

    ``like``: LIKE patterns on the type (None: every type).
    """
    cur = await conn.execute(
        "SELECT h.horizon::text::bigint AS horizon, h.xmax, e.* FROM"
        " (SELECT lily_change_horizon()::text::xid8 AS horizon,"
        "  pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS xmax) h"
        f" LEFT JOIN LATERAL (SELECT {_FEED_COLUMNS} FROM change_events c"
        "  WHERE c.tenant_id = %s AND (c.xid, c.seq) > (%s::text::xid8, %s) AND c.xid < h.horizon"
        "  AND (%s::text[] IS NULL OR c.type LIKE ANY(%s::text[]))"
        "  AND (c.asset_id IS NULL OR EXISTS ("
        "   SELECT 1 FROM assets a WHERE a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id))"
        "  ORDER BY c.xid, c.seq LIMIT %s) e ON true",
        [tenant_id, str(after[0]), after[1], like, like, limit],
    )
    rows = await cur.fetchall()
    return int(rows[0]["horizon"]), int(rows[0]["xmax"]), [r for r in rows if r["seq"] is not None]


async def prune(conn: Conn, older_than: datetime, limit: int) -> int:
    """Delete up to ``limit`` change events (of every tenant) that occurred before ``older_than``."""
    cur = await conn.execute(
        "DELETE FROM change_events WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM change_events WHERE occurred_at < %s LIMIT %s))",
        [older_than, limit],
    )
    return cur.rowcount
