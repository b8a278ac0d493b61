"""Bulk jobs in SQL: a per-request staging table, the set-based append, and the job's status.

Items are staged with COPY into a temporary table (PostgreSQL refuses COPY into tables with row-level
security, but a transaction's own temp table has none and is invisible to everyone else). Only when the
whole body is in do we lock the partition heads and move the items into the log with one
``INSERT … SELECT``: the locks are held for that one statement and the commit, not for the upload.
A body that turns out too large rolls the transaction back, and the staging table goes with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from psycopg import AsyncCopy
from psycopg.types.json import Jsonb

from lily.store.db import Conn
from lily.store.log import LOG_CHANNEL

# The first errors a job keeps; the rest are counted, not kept (a 100,000-item job of garbage must not
# write a 10 MB jsonb value).
MAX_KEPT_ERRORS = 100


# Advisory-lock namespaces (first key of the two-int form) of bulk slots, apart from the pipeline's and
# the scheduler's: the deployment's slots are (_SLOTS, 0..n-1); a tenant's are (_TENANT_SLOTS, hash).
_SLOTS = 0x424C4B  # "BLK"
_TENANT_SLOTS = 0x424C54  # "BLT"


async def take_slot(conn: Conn, tenant_id: str, total: int, per_tenant: int) -> tuple[bool, bool]:
    """Take one of the tenant's ``per_tenant`` bulk slots and one of the deployment's ``total`` for the
    rest of this transaction: (got the tenant's, got the deployment's). Unless both, roll back.

    Slots are transaction-level advisory locks, so every API process sees the same ones, and a slot is
    freed by commit, rollback, or the connection's death: an upload that dies cannot leak one. A tenant's
    slot keys are hashes of (tenant, j); two tenants sharing a key would only share that one slot.
    """
    cur = await conn.execute(
        "SELECT EXISTS (SELECT FROM generate_series(0, %(per)s - 1) AS j"
        "  WHERE pg_try_advisory_xact_lock(%(tns)s, hashtext(%(tenant)s || '/' || j))) AS tenant,"
        " EXISTS (SELECT FROM generate_series(0, %(total)s - 1) AS k WHERE pg_try_advisory_xact_lock(%(ns)s, k))"
        " AS deployment",
        {"per": per_tenant, "tns": _TENANT_SLOTS, "tenant": tenant_id, "total": total, "ns": _SLOTS},
    )
    row = await cur.fetchone()
    assert row is not None
    return bool(row["tenant"]), bool(row["deployment"])


async def slots_held(conn: Conn) -> int:
    """How many of the deployment's bulk slots are held right now (for tests and operators)."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s::oid",
        [_SLOTS],
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def create_stage(conn: Conn) -> None:
    """The staging table for this transaction's items; dropped at commit or rollback."""
    await conn.execute(
        "CREATE TEMP TABLE bulk_stage (event_id uuid NOT NULL, partition int NOT NULL, ord int NOT NULL,"
        " subject text NOT NULL, payload jsonb NOT NULL, item_index int NOT NULL) ON COMMIT DROP"
    )


class Stager:
    """Feeds staged items into a COPY as preformatted text lines, in batches.

    ``copy.write_row`` adapts each value in Python (~10 µs an item); one f-string per item and one
    ``write`` per ``_FLUSH_BYTES`` is several times cheaper, and this is the per-item hot path of a
    100,000-item upload. ``ord`` is the item's position within its partition, so the append computes
    ``seq`` by addition instead of sorting with a window function while it holds the partition locks.
    """

    _FLUSH_BYTES = 256 * 1024

    def __init__(self, copy: AsyncCopy) -> None:
        self._copy = copy
        self._lines: list[str] = []
        self._size = 0

    def add(self, event_id: str, partition: int, ord_: int, subject: str, payload_json: str, index: int) -> bool:
        """Buffer one item; True when the buffer is full and the caller should ``await flush()``."""
        line = f"{event_id}\t{partition}\t{ord_}\t{_escape(subject)}\t{_escape(payload_json)}\t{index}\n"
        self._lines.append(line)
        self._size += len(line)
        return self._size >= self._FLUSH_BYTES

    async def flush(self) -> None:
        if self._lines:
            await self._copy.write("".join(self._lines).encode())
            self._lines.clear()
            self._size = 0


# COPY text format: backslash, tab, newline and carriage return must be escaped inside a value.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _escape(value: str) -> str:
    return value.translate(_COPY_ESCAPES)


@asynccontextmanager
async def stager(conn: Conn) -> AsyncIterator[Stager]:
    """A COPY into the staging table, fed by ``Stager.add``; flushed and finished on exit."""
    async with (
        conn.cursor() as cur,
        cur.copy("COPY bulk_stage (event_id, partition, ord, subject, payload, item_index) FROM STDIN") as copy,
    ):
        stage = Stager(copy)
        yield stage
        await stage.flush()


async def create_job(
    conn: Conn, tenant_id: str, job_id: UUID, actor: str, total: int, rejected: int, errors: list[dict[str, Any]]
) -> None:
    await conn.execute(
        "INSERT INTO bulk_jobs (tenant_id, job_id, actor, total, rejected, errors, receiving)"
        " VALUES (%s, %s, %s, %s, %s, %s, false)",
        [tenant_id, job_id, actor, total, rejected, Jsonb(errors[:MAX_KEPT_ERRORS])],
    )


async def append_staged(
    conn: Conn,
    tenant_id: str,
    job_id: UUID,
    actor: str,
    request_id: str | None,
    kind: str,
    counts: Mapping[int, int],
) -> None:
    """Move the staged items into the log, numbered after each partition's head, in one statement.

    Same protocol as ``store.log.append``: lock the heads in partition order (appenders never
    deadlock), advance them, insert, notify; the locks hold to commit so sequence numbers commit in order.
    """
    if not counts:
        return
    parts = sorted(counts)
    await conn.execute("SELECT 1 FROM log_heads WHERE partition = ANY(%s) ORDER BY partition FOR UPDATE", [parts])
    cur = await conn.execute(
        "UPDATE log_heads h SET next_seq = h.next_seq + c.n"
        " FROM unnest(%s::int[], %s::bigint[]) AS c(p, n) WHERE h.partition = c.p"
        " RETURNING h.partition, h.next_seq - c.n AS first_seq",
        [parts, [counts[p] for p in parts]],
    )
    heads = await cur.fetchall()
    await conn.execute(
        "INSERT INTO events (event_id, partition, seq, tenant_id, subject, kind, payload, actor, request_id,"
        " source, bulk_job_id, item_index)"
        " SELECT s.event_id, s.partition, h.first_seq + s.ord, %s, s.subject, %s, s.payload, %s, %s,"
        " 'bulk', %s, s.item_index"
        " FROM bulk_stage s JOIN unnest(%s::int[], %s::bigint[]) AS h(partition, first_seq) USING (partition)",
        [tenant_id, kind, actor, request_id, job_id, [h["partition"] for h in heads], [h["first_seq"] for h in heads]],
    )
    await conn.execute("SELECT pg_notify(%s, %s)", [LOG_CHANNEL, ",".join(map(str, parts))])


async def get_job(conn: Conn, tenant_id: str, job_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT job_id, actor, total, rejected, errors, created_at FROM bulk_jobs WHERE tenant_id = %s AND job_id = %s",
        [tenant_id, job_id],
    )
    return await cur.fetchone()


async def event_counts(conn: Conn, tenant_id: str, job_id: UUID) -> dict[str, int]:
    """The job's events by status, counted from the log itself (index ``events_bulk_job``).

    Deriving counts here, rather than bumping a counter row from every worker, keeps workers of
    different partitions from serialising on one row.
    """
    cur = await conn.execute(
        "SELECT status, count(*) AS n FROM events WHERE bulk_job_id = %s AND tenant_id = %s GROUP BY status",
        [job_id, tenant_id],
    )
    return {row["status"]: int(row["n"]) for row in await cur.fetchall()}


async def event_failures(conn: Conn, tenant_id: str, job_id: UUID, limit: int) -> list[dict[str, Any]]:
    """The job's items the pipeline refused or dead-lettered, by item index."""
    cur = await conn.execute(
        "SELECT item_index AS index, error, status FROM events"
        " WHERE bulk_job_id = %s AND tenant_id = %s AND status IN ('failed', 'dead_lettered')"
        " ORDER BY item_index LIMIT %s",
        [job_id, tenant_id, limit],
    )
    return await cur.fetchall()


async def last_seqs(conn: Conn, tenant_id: str, job_id: UUID) -> dict[int, int]:
    """Per partition, the sequence number of the job's last event there."""
    cur = await conn.execute(
        "SELECT partition, max(seq) AS seq FROM events WHERE bulk_job_id = %s AND tenant_id = %s GROUP BY partition",
        [job_id, tenant_id],
    )
    return {row["partition"]: int(row["seq"]) for row in await cur.fetchall()}
