"""The event log in SQL: appending, claiming a partition, reading a batch, recording outcomes.

Ordering rests on one rule: an appender locks its partitions' ``log_heads`` rows (in partition order,
so appenders never deadlock) and holds them to commit. Sequence numbers of a partition therefore become
visible in order, and a consumer that reads ``seq > applied_seq`` can never skip a late commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from lily.domain.events import Accepted, NewEvent, partition_of
from lily.store.db import Conn, insert_rows

LOG_CHANNEL = "lily_log"
APPLIED_CHANNEL = "lily_applied"

_EVENT_COLUMNS = (
    "event_id",
    "partition",
    "seq",
    "tenant_id",
    "subject",
    "kind",
    "payload",
    "actor",
    "request_id",
    "source",
    "bulk_job_id",
    "item_index",
)


async def append(conn: Conn, events: Sequence[NewEvent], partitions: int) -> list[Accepted]:
    """Append ``events`` in the caller's transaction; they become visible to workers at its commit."""
    if not events:
        return []
    parts = [partition_of(e.tenant_id, e.subject, partitions) for e in events]
    counts = sorted(Counter(parts).items())
    if len(counts) > 1:
        await conn.execute(
            "SELECT 1 FROM log_heads WHERE partition = ANY(%s) ORDER BY partition FOR UPDATE",
            [[p for p, _ in counts]],
        )
    cur = await conn.execute(
        "UPDATE log_heads h SET next_seq = h.next_seq + c.n"
        " FROM unnest(%s::int[], %s::bigint[]) AS c(p, n) WHERE h.partition = c.p"
        " RETURNING h.partition, h.next_seq - c.n AS first_seq",
        [[p for p, _ in counts], [n for _, n in counts]],
    )
    next_seq = {row["partition"]: row["first_seq"] for row in await cur.fetchall()}
    accepted = []
    rows = []
    for event, part in zip(events, parts, strict=True):
        seq = next_seq[part]
        next_seq[part] = seq + 1
        accepted.append(Accepted(event.event_id, part, seq))
        rows.append(
            (
                event.event_id,
                part,
                seq,
                event.tenant_id,
                event.subject,
                event.kind,
                event.payload,
                event.actor,
                event.request_id,
                event.source,
                event.bulk_job_id,
                event.item_index,
            )
        )
    await _insert_events(conn, rows)
    await conn.execute("SELECT pg_notify(%s, %s)", [LOG_CHANNEL, ",".join(str(p) for p, _ in counts)])
    return accepted


async def append_alone(conn: Conn, event: NewEvent, partitions: int) -> Accepted:
    """Append one event in its own transaction, in one round trip. ``conn`` must be in autocommit and
    outside any transaction (the function sets the tenant for its own call only)."""
    partition = partition_of(event.tenant_id, event.subject, partitions)
    cur = await conn.execute(
        "SELECT lily_append_event(%s, %s, %s, %s, %s, %s, %s, %s, %s) AS seq",
        [
            event.event_id,
            partition,
            event.tenant_id,
            event.subject,
            event.kind,
            Jsonb(event.payload),
            event.actor,
            event.request_id,
            event.source,
        ],
    )
    row = await cur.fetchone()
    assert row is not None
    return Accepted(event.event_id, partition, int(row["seq"]))


async def _insert_events(conn: Conn, rows: list[tuple[Any, ...]]) -> None:
    await insert_rows(
        conn,
        "events",
        _EVENT_COLUMNS,
        ("uuid", "int4", "int8", "text", "text", "text", "jsonb", "text", "text", "text", "uuid", "int4"),
        rows,
    )


# -- consumer side -------------------------------------------------------------------------------


async def partitions_with_backlog(conn: Conn) -> list[int]:
    cur = await conn.execute(
        "SELECT h.partition FROM log_heads h JOIN log_offsets o USING (partition)"
        " WHERE h.next_seq - 1 > o.applied_seq AND (o.retry_at IS NULL OR o.retry_at <= now())"
    )
    return [row["partition"] for row in await cur.fetchall()]


async def try_claim(conn: Conn, partition: int) -> int | None:
    """Lock ``partition`` for this transaction; its applied offset, or None if another worker has it.

    The offset is read in a second statement, after the lock is held. Read in the same statement it
    would come from that statement's snapshot, taken *before* the lock: a worker that committed and
    released the lock in between would leave us its old offset, and we would apply its batch again.
    """
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s, %s) AS locked", [_PARTITION_LOCK, partition])
    row = await cur.fetchone()
    if row is None or not row["locked"]:
        return None
    cur = await conn.execute(
        "SELECT applied_seq FROM log_offsets WHERE partition = %s AND (retry_at IS NULL OR retry_at <= now())",
        [partition],
    )
    row = await cur.fetchone()
    return None if row is None else int(row["applied_seq"])


_PARTITION_LOCK = 0x4C4F47  # "LOG": the advisory lock namespace for partitions


async def try_claim_many(conn: Conn, partitions: Sequence[int]) -> dict[int, int]:
    """Lock whichever of ``partitions`` no other worker holds; their applied offsets.

    As in :func:`try_claim`, the offsets are read by a second statement, after the locks are held.
    """
    cur = await conn.execute(
        "SELECT p FROM unnest(%s::int[]) AS p WHERE pg_try_advisory_xact_lock(%s, p)",
        [list(partitions), _PARTITION_LOCK],
    )
    locked = [row["p"] for row in await cur.fetchall()]
    if not locked:
        return {}
    cur = await conn.execute(
        "SELECT partition, applied_seq FROM log_offsets"
        " WHERE partition = ANY(%s) AND (retry_at IS NULL OR retry_at <= now())",
        [locked],
    )
    return {row["partition"]: int(row["applied_seq"]) for row in await cur.fetchall()}


async def read_batches(conn: Conn, offsets: dict[int, int], per_partition: int) -> list[dict[str, Any]]:
    """The next events of several partitions, each partition's in order. Must run as the pipeline role."""
    cur = await conn.execute(
        "SELECT e.* FROM unnest(%s::int[], %s::bigint[]) AS o(p, s) CROSS JOIN LATERAL ("
        " SELECT event_id, partition, seq, tenant_id, subject, kind, payload, actor, request_id,"
        " source, bulk_job_id, item_index, attempts, accepted_at"
        " FROM events WHERE partition = o.p AND seq > o.s ORDER BY seq LIMIT %s) e",
        [list(offsets), list(offsets.values()), per_partition],
    )
    return await cur.fetchall()


async def advance_many(conn: Conn, last_seq: dict[int, int]) -> None:
    """Move several partitions' offsets at once and tell waiting writers (``lily_applied``)."""
    await conn.execute(
        "UPDATE log_offsets o SET applied_seq = v.s, retry_at = NULL"
        " FROM unnest(%s::int[], %s::bigint[]) AS v(p, s) WHERE o.partition = v.p",
        [list(last_seq), list(last_seq.values())],
    )
    await notify_applied(conn, last_seq)


async def notify_applied(conn: Conn, last_seq: dict[int, int]) -> None:
    # Payload "p:seq,p:seq,…"; NOTIFY payloads stop at 8000 bytes, so long lists go in several.
    pairs = [f"{p}:{s}" for p, s in last_seq.items()]
    for i in range(0, len(pairs), 300):
        await conn.execute("SELECT pg_notify(%s, %s)", [APPLIED_CHANNEL, ",".join(pairs[i : i + 300])])


def parse_applied(payload: str) -> list[tuple[int, int]]:
    """The (partition, seq) pairs of a ``lily_applied`` notification."""
    out = []
    for pair in payload.split(","):
        partition, _, seq = pair.partition(":")
        out.append((int(partition), int(seq)))
    return out


async def read_batch(conn: Conn, partition: int, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """The next events of a partition, in order. Must run under the pipeline role."""
    return await read_batches(conn, {partition: after_seq}, limit)


async def record_outcomes(
    conn: Conn, event_ids: list[UUID], statuses: list[str], results: list[Any], errors: list[str | None]
) -> None:
    """Mark a batch's events applied or failed. Must run under the pipeline role."""
    from psycopg.types.json import Jsonb

    await conn.execute(
        "UPDATE events e SET status = r.status, result = r.result, error = r.error,"
        " applied_at = clock_timestamp(), attempts = e.attempts + 1"
        " FROM unnest(%b::uuid[], %b::text[], %b::jsonb[], %b::text[]) AS r(event_id, status, result, error)"
        " WHERE e.event_id = r.event_id",
        [event_ids, statuses, [Jsonb(r) if r is not None else None for r in results], errors],
    )


async def advance(conn: Conn, partition: int, seq: int) -> None:
    await conn.execute(
        "UPDATE log_offsets SET applied_seq = %s, retry_at = NULL WHERE partition = %s", [seq, partition]
    )
    await notify_applied(conn, {partition: seq})


async def record_retry(conn: Conn, event_id: UUID, partition: int, error: str, retry_at: datetime) -> None:
    """Count a failed attempt and hold the partition until ``retry_at`` (order forbids skipping ahead)."""
    await conn.execute("UPDATE events SET attempts = attempts + 1, error = %s WHERE event_id = %s", [error, event_id])
    await conn.execute("UPDATE log_offsets SET retry_at = %s WHERE partition = %s", [retry_at, partition])


async def dead_letter(
    conn: Conn,
    *,
    event_id: UUID,
    tenant_id: str,
    partition: int,
    seq: int,
    subject: str,
    kind: str,
    attempts: int,
    error: str,
) -> None:
    """Give up on an event: mark it, queue it for an admin, and move the partition past it.

    ``attempts`` counts this last one. Must run under the pipeline role.
    """
    await conn.execute(
        "UPDATE events SET status = 'dead_lettered', attempts = %s, error = %s,"
        " applied_at = clock_timestamp() WHERE event_id = %s",
        [attempts, error, event_id],
    )
    await conn.execute(
        "INSERT INTO dead_letters (tenant_id, event_id, partition, seq, subject, kind, error, attempts)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [tenant_id, event_id, partition, seq, subject, kind, error, attempts],
    )
    await advance(conn, partition, seq)


async def applied_offsets(conn: Conn, partitions: Sequence[int]) -> dict[int, int]:
    cur = await conn.execute(
        "SELECT partition, applied_seq FROM log_offsets WHERE partition = ANY(%s)", [list(partitions)]
    )
    return {row["partition"]: int(row["applied_seq"]) for row in await cur.fetchall()}


async def lag(conn: Conn) -> list[dict[str, Any]]:
    """Per partition: events accepted but not yet applied, and whether it waits on a retry."""
    cur = await conn.execute(
        "SELECT h.partition, h.next_seq - 1 - o.applied_seq AS lag, o.retry_at"
        " FROM log_heads h JOIN log_offsets o USING (partition) ORDER BY h.partition"
    )
    return await cur.fetchall()


async def open_dead_letters(conn: Conn) -> int:
    """Dead letters awaiting an admin, across tenants. Must run under the pipeline role."""
    cur = await conn.execute("SELECT count(*) AS n FROM dead_letters WHERE state = 'open'")
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def recent_latency(conn: Conn, per_partition: int = 200, window_seconds: float = 900) -> dict[str, Any]:
    """p50/p99 accept→apply seconds over each partition's latest applied events in the window.

    Walks the ``(partition, seq)`` index back from each applied offset, so it costs P small index scans
    however long the log grows. Must run under the pipeline role (it reads every tenant's events).
    """
    cur = await conn.execute(
        "SELECT count(*) AS n,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY x.s) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY x.s) AS p99"
        " FROM log_offsets o CROSS JOIN LATERAL ("
        "   SELECT extract(epoch FROM e.applied_at - e.accepted_at)::float8 AS s FROM events e"
        "   WHERE e.partition = o.partition AND e.seq <= o.applied_seq AND e.status = 'applied'"
        "   AND e.applied_at > now() - make_interval(secs => %s)"
        "   ORDER BY e.seq DESC LIMIT %s) x",
        [window_seconds, per_partition],
    )
    row = await cur.fetchone()
    n = int(row["n"]) if row else 0
    return {
        "events": n,
        "p50_seconds": row["p50"] if row and n else None,
        "p99_seconds": row["p99"] if row and n else None,
        "window_seconds": window_seconds,
    }


# -- reading events as a tenant ------------------------------------------------------------------


async def get_event(conn: Conn, tenant_id: str, event_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT event_id, partition, seq, subject, kind, status, attempts, error, result, source,"
        " accepted_at, applied_at, bulk_job_id, item_index, replay_of"
        " FROM events WHERE tenant_id = %s AND event_id = %s",
        [tenant_id, event_id],
    )
    return await cur.fetchone()
