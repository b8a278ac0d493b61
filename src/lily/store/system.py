"""Health of the store: reachability, schema version, and the event log's lag, dead letters, latency."""

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
