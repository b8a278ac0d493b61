"""Health and metrics figures from the store: the deployment's (operators) and one tenant's."""

from __future__ import annotations

from typing import Any

from lily.store import log as store_log
from lily.store.db import Conn, as_pipeline


async def health(conn: Conn) -> dict[str, Any]:
    cur = await conn.execute("SELECT max(version) AS version FROM schema_migrations")
    row = await cur.fetchone()
    lags = await store_log.lag(conn)
    total = sum(int(r["lag"]) for r in lags)
    # Dead letters and latency are counted over every tenant's rows: only the pipeline role sees them
    # (the figures are counts and timings, nothing of any tenant's content).
    await as_pipeline(conn)
    dead = await store_log.open_dead_letters(conn)
    latency = await store_log.recent_latency(conn)
    return {
        "schema_version": row["version"] if row else 0,
        "pipeline": {
            "partitions": len(lags),
            "lag": total,
            "max_partition_lag": max((int(r["lag"]) for r in lags), default=0),
            "partitions_in_retry": sum(1 for r in lags if r["retry_at"] is not None),
            "dead_letters": dead,
            "accept_to_apply": latency,
        },
    }


async def tenant_backlog(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    """Per partition: the tenant's events accepted but not yet decided, and how many already failed once.

    Not yet decided means past the partition's offset, or at or below it but *held*: in a parked
    subject (waiting for its retry) or in the tenant's lane (see migration 0004). Each part walks an
    index the log already has: ``(partition, seq)`` past the offset and along a lane, ``events_subject``
    for a parked subject. So the cost follows the backlog, never the log's length, and no index on
    ``status`` is needed (one would stop the apply's UPDATE from being a HOT update). Run it in the
    tenant's transaction: row-level security scopes it as well as the WHERE.
    """
    cur = await conn.execute(
        "WITH pending AS ("
        "  SELECT o.partition, b.n, b.retrying FROM log_offsets o CROSS JOIN LATERAL ("
        "    SELECT count(*) AS n, count(*) FILTER (WHERE e.attempts > 0) AS retrying FROM events e"
        "    WHERE e.partition = o.partition AND e.seq > o.applied_seq AND e.tenant_id = %(t)s) b"
        "), held AS ("
        "  SELECT e.event_id, e.partition, e.attempts FROM parked_subjects p"
        "  JOIN log_offsets o ON o.partition = p.partition"
        "  JOIN events e ON e.tenant_id = p.tenant_id AND e.subject = p.subject"
        "   AND e.seq <= o.applied_seq AND e.status = 'accepted'"
        "  WHERE p.tenant_id = %(t)s"
        "  UNION"
        "  SELECT e.event_id, e.partition, e.attempts FROM tenant_lanes l"
        "  JOIN log_offsets o ON o.partition = l.partition"
        "  JOIN events e ON e.partition = l.partition AND e.seq >= l.next_seq AND e.seq <= o.applied_seq"
        "   AND e.tenant_id = l.tenant_id AND e.status = 'accepted'"
        "  WHERE l.tenant_id = %(t)s"
        ")"
        " SELECT p.partition, p.n + count(h.event_id) AS backlog,"
        " p.retrying + count(h.event_id) FILTER (WHERE h.attempts > 0) AS retrying"
        " FROM pending p LEFT JOIN held h USING (partition)"
        " GROUP BY p.partition, p.n, p.retrying ORDER BY p.partition",
        {"t": tenant_id},
    )
    return await cur.fetchall()


async def tenant_dead_letters_open(conn: Conn, tenant_id: str) -> int:
    """The tenant's dead letters awaiting replay or discard (the ``dead_letters_open`` partial index)."""
    cur = await conn.execute(
        "SELECT count(*) AS n FROM dead_letters WHERE tenant_id = %s AND state = 'open'", [tenant_id]
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
