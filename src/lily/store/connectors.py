"""The connector registry in SQL: instances, runs, leases, and what each crawl last saw.

The API reads and writes as the tenant (row-level security keeps tenants apart). The poll job claims
due instances and queued runs across tenants as ``lily_pipeline`` (callers run
:func:`lily.store.db.as_pipeline` first); a run's own work happens in tenant transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from lily.store.db import Conn

_CONNECTOR = (
    "c.tenant_id, c.connector_id, c.name, c.kind, c.direction, c.config, c.config_sealed, c.schedule, c.active,"
    " c.state, c.created_at, c.updated_at, c.next_run_at, c.failures, c.lease_owner, c.lease_until"
)
_RUN = (
    "run_id, connector_id, trigger, state, requested_by, runner, attempt, created_at, started_at, finished_at,"
    " seen, created, updated, unchanged, removed, events, errors, error, detail"
)
# Each instance's last finished run and last success, for its health.
_HEALTH = """
    LEFT JOIN LATERAL (
        SELECT r.run_id AS last_run_id, r.state AS last_outcome, r.finished_at AS last_run_at, r.error AS last_error
        FROM connector_runs r
        WHERE r.tenant_id = c.tenant_id AND r.connector_id = c.connector_id AND r.finished_at IS NOT NULL
        ORDER BY r.finished_at DESC LIMIT 1
    ) last ON true
    LEFT JOIN LATERAL (
        SELECT max(r.finished_at) AS last_success_at
        FROM connector_runs r
        WHERE r.tenant_id = c.tenant_id AND r.connector_id = c.connector_id AND r.state = 'succeeded'
    ) ok ON true
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE r.state = 'running') AS running,
               count(*) FILTER (WHERE r.state = 'queued') AS queued
        FROM connector_runs r
        WHERE r.tenant_id = c.tenant_id AND r.connector_id = c.connector_id AND r.state IN ('queued', 'running')
    ) now_ ON true
"""
_WITH_HEALTH = f"SELECT {_CONNECTOR}, last.*, ok.*, now_.*, now() AS db_now FROM connectors c {_HEALTH}"


# -- instances (as the tenant) ----------------------------------------------------------------------


async def create(
    conn: Conn,
    tenant_id: str,
    *,
    name: str,
    kind: str,
    config: Mapping[str, Any],
    sealed: str | None,
    schedule: Mapping[str, Any] | None,
    active: bool,
    next_run_at: datetime | None,
) -> UUID | None:
    """The new instance's id; None when the tenant has an inbound connector of that name already."""
    cur = await conn.execute(
        "INSERT INTO connectors"
        " (tenant_id, name, kind, direction, config, config_sealed, schedule, active, next_run_at)"
        " VALUES (%s, %s, %s, 'inbound', %s, %s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, direction, name) DO NOTHING RETURNING connector_id",
        [tenant_id, name, kind, Jsonb(dict(config)), sealed, _json(schedule), active, next_run_at],
    )
    row = await cur.fetchone()
    return row["connector_id"] if row else None


async def get(conn: Conn, tenant_id: str, connector_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"{_WITH_HEALTH} WHERE c.tenant_id = %s AND c.connector_id = %s AND c.direction = 'inbound'",
        [tenant_id, connector_id],
    )
    return await cur.fetchone()


async def get_for_update(conn: Conn, tenant_id: str, connector_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_CONNECTOR} FROM connectors c WHERE c.tenant_id = %s AND c.connector_id = %s"
        " AND c.direction = 'inbound' FOR UPDATE",
        [tenant_id, connector_id],
    )
    return await cur.fetchone()


async def list_page(conn: Conn, tenant_id: str, limit: int, after: UUID | None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"{_WITH_HEALTH} WHERE c.tenant_id = %s AND c.direction = 'inbound'"
        " AND (%s::uuid IS NULL OR c.connector_id > %s::uuid) ORDER BY c.connector_id LIMIT %s",
        [tenant_id, after, after, limit],
    )
    return await cur.fetchall()


async def list_all(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"{_WITH_HEALTH} WHERE c.tenant_id = %s AND c.direction = 'inbound' ORDER BY c.created_at, c.connector_id",
        [tenant_id],
    )
    return await cur.fetchall()


async def update(
    conn: Conn,
    tenant_id: str,
    connector_id: UUID,
    *,
    name: str,
    config: Mapping[str, Any],
    sealed: str | None,
    schedule: Mapping[str, Any] | None,
    active: bool,
    next_run_at: datetime | None,
) -> bool:
    """False when another inbound connector of the tenant has the name already."""
    cur = await conn.execute(
        "UPDATE connectors SET name = %s, config = %s, config_sealed = %s, schedule = %s, active = %s,"
        " next_run_at = %s, failures = 0, updated_at = now()"
        " WHERE tenant_id = %s AND connector_id = %s AND NOT EXISTS (SELECT 1 FROM connectors o"
        "  WHERE o.tenant_id = %s AND o.direction = 'inbound' AND o.name = %s AND o.connector_id <> %s)",
        [
            *(name, Jsonb(dict(config)), sealed, _json(schedule), active, next_run_at),
            *(tenant_id, connector_id, tenant_id, name, connector_id),
        ],
    )
    return cur.rowcount == 1


async def delete(conn: Conn, tenant_id: str, connector_id: UUID) -> bool:
    cur = await conn.execute(
        "DELETE FROM connectors WHERE tenant_id = %s AND connector_id = %s AND direction = 'inbound'",
        [tenant_id, connector_id],
    )
    return cur.rowcount == 1


async def owned_assets(conn: Conn, tenant_id: str, source: str) -> list[str]:
    """Qualified names of the live assets this source wrote last and keeps up to date."""
    cur = await conn.execute(
        "SELECT qualified_name FROM assets WHERE tenant_id = %s AND source = %s AND has_active_source"
        " AND deleted_at IS NULL ORDER BY qualified_name",
        [tenant_id, source],
    )
    return [r["qualified_name"] for r in await cur.fetchall()]


async def save_state(conn: Conn, tenant_id: str, connector_id: UUID, state: Mapping[str, Any]) -> None:
    await conn.execute(
        "UPDATE connectors SET state = %s WHERE tenant_id = %s AND connector_id = %s",
        [Jsonb(dict(state)), tenant_id, connector_id],
    )


# -- runs (as the tenant) ---------------------------------------------------------------------------


async def request_run(conn: Conn, tenant_id: str, connector_id: UUID, actor: str) -> tuple[dict[str, Any], bool]:
    """Queue a run now; (the run, True) — or the run already waiting and False."""
    cur = await conn.execute(
        f"INSERT INTO connector_runs (tenant_id, run_id, connector_id, trigger, state, requested_by)"
        f" VALUES (%s, %s, %s, 'manual', 'queued', %s) ON CONFLICT DO NOTHING RETURNING {_RUN}",
        [tenant_id, uuid.uuid4(), connector_id, actor],
    )
    row = await cur.fetchone()
    if row is not None:
        return row, True
    cur = await conn.execute(
        f"SELECT {_RUN} FROM connector_runs WHERE tenant_id = %s AND connector_id = %s AND state = 'queued'",
        [tenant_id, connector_id],
    )
    waiting = await cur.fetchone()
    assert waiting is not None
    return waiting, False


async def list_runs(
    conn: Conn, tenant_id: str, connector_id: UUID, limit: int, before: tuple[datetime, UUID] | None
) -> list[dict[str, Any]]:
    at, run_id = before if before is not None else (None, None)
    cur = await conn.execute(
        f"SELECT {_RUN} FROM connector_runs WHERE tenant_id = %s AND connector_id = %s"
        " AND (%s::timestamptz IS NULL OR (created_at, run_id) < (%s::timestamptz, %s::uuid))"
        " ORDER BY created_at DESC, run_id DESC LIMIT %s",
        [tenant_id, connector_id, at, at, run_id, limit],
    )
    return await cur.fetchall()


async def get_run(conn: Conn, tenant_id: str, run_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_RUN} FROM connector_runs WHERE tenant_id = %s AND run_id = %s", [tenant_id, run_id]
    )
    return await cur.fetchone()


# -- the poll job (as lily_pipeline) ----------------------------------------------------------------


async def close_abandoned(conn: Conn) -> int:
    """Fail the runs left 'running' by a process that died: their instance's lease lapsed or moved."""
    cur = await conn.execute(
        "UPDATE connector_runs r SET state = 'failed', finished_at = clock_timestamp(),"
        " error = 'abandoned: the process running it stopped before it finished'"
        " FROM connectors c WHERE r.state = 'running' AND c.tenant_id = r.tenant_id AND c.connector_id = r.connector_id"
        " AND (c.lease_owner IS DISTINCT FROM r.runner OR c.lease_until < now())"
    )
    return cur.rowcount


async def claim(conn: Conn, node: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
    """Take the lease of up to ``limit`` instances with a queued run or a due schedule, and start a run
    of each: the claimed runs (tenant_id, run_id, connector_id, trigger)."""
    if limit <= 0:
        return []
    lease = [node, lease_seconds]
    cur = await conn.execute(
        "WITH picked AS ("
        "  SELECT r.tenant_id, r.run_id, r.connector_id FROM connector_runs r"
        "  JOIN connectors c ON c.tenant_id = r.tenant_id AND c.connector_id = r.connector_id"
        "  WHERE r.state = 'queued' AND (c.lease_until IS NULL OR c.lease_until < now())"
        "  AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = c.tenant_id AND t.deleted_at IS NOT NULL)"
        "  ORDER BY r.created_at LIMIT %s FOR UPDATE OF c, r SKIP LOCKED),"
        " leased AS ("
        "  UPDATE connectors c SET lease_owner = %s, lease_until = now() + make_interval(secs => %s)"
        "  FROM picked p WHERE c.tenant_id = p.tenant_id AND c.connector_id = p.connector_id)"
        " UPDATE connector_runs r SET state = 'running', started_at = clock_timestamp(), runner = %s"
        " FROM picked p WHERE r.tenant_id = p.tenant_id AND r.run_id = p.run_id"
        " RETURNING r.tenant_id, r.run_id, r.connector_id, r.trigger",
        [limit, *lease, node],
    )
    claimed = await cur.fetchall()
    taken = {(r["tenant_id"], r["connector_id"]) for r in claimed}
    room = limit - len(claimed)
    if room <= 0:
        return claimed
    cur = await conn.execute(
        "WITH picked AS ("
        "  SELECT tenant_id, connector_id, failures FROM connectors"
        "  WHERE active AND direction = 'inbound' AND next_run_at <= now()"
        "  AND (lease_until IS NULL OR lease_until < now())"
        "  AND NOT EXISTS (SELECT 1 FROM tenants t WHERE t.tenant_id = connectors.tenant_id"
        "   AND t.deleted_at IS NOT NULL)"
        "  ORDER BY next_run_at LIMIT %s FOR UPDATE SKIP LOCKED),"
        " leased AS ("
        "  UPDATE connectors c SET lease_owner = %s, lease_until = now() + make_interval(secs => %s)"
        "  FROM picked p WHERE c.tenant_id = p.tenant_id AND c.connector_id = p.connector_id)"
        " INSERT INTO connector_runs (tenant_id, run_id, connector_id, trigger, state, runner, started_at, attempt)"
        " SELECT tenant_id, gen_random_uuid(), connector_id,"
        "  CASE WHEN failures > 0 THEN 'retry' ELSE 'schedule' END, 'running', %s, clock_timestamp(), failures + 1"
        " FROM picked RETURNING tenant_id, run_id, connector_id, trigger",
        [room, *lease, node],
    )
    claimed += [r for r in await cur.fetchall() if (r["tenant_id"], r["connector_id"]) not in taken]
    return claimed


async def load_for_run(conn: Conn, tenant_id: str, connector_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_CONNECTOR} FROM connectors c WHERE c.tenant_id = %s AND c.connector_id = %s",
        [tenant_id, connector_id],
    )
    return await cur.fetchone()


async def renew_lease(conn: Conn, tenant_id: str, connector_id: UUID, node: str, lease_seconds: float) -> bool:
    cur = await conn.execute(
        "UPDATE connectors SET lease_until = now() + make_interval(secs => %s)"
        " WHERE tenant_id = %s AND connector_id = %s AND lease_owner = %s",
        [lease_seconds, tenant_id, connector_id, node],
    )
    return cur.rowcount == 1


async def finish_run(
    conn: Conn,
    tenant_id: str,
    run_id: UUID,
    *,
    succeeded: bool,
    counts: Mapping[str, int],
    errors: Sequence[str],
    error: str | None,
    detail: Mapping[str, Any],
) -> None:
    await conn.execute(
        "UPDATE connector_runs SET state = %s, finished_at = clock_timestamp(), seen = %s, created = %s,"
        " updated = %s, unchanged = %s, removed = %s, events = %s, errors = %s, error = %s, detail = %s"
        " WHERE tenant_id = %s AND run_id = %s",
        [
            "succeeded" if succeeded else "failed",
            *(counts.get(k, 0) for k in ("seen", "created", "updated", "unchanged", "removed", "events")),
            Jsonb(list(errors)),
            error,
            Jsonb(dict(detail)),
            tenant_id,
            run_id,
        ],
    )


async def release(
    conn: Conn,
    tenant_id: str,
    connector_id: UUID,
    node: str,
    *,
    failures: int | None,
    next_run_at: datetime | None,
    keep_next: bool,
) -> None:
    """Give the lease back and set when the instance next runs (``keep_next``: leave it as it is, for a
    run-now request that must not move the schedule)."""
    await conn.execute(
        "UPDATE connectors SET lease_owner = NULL, lease_until = NULL,"
        " failures = coalesce(%s, failures),"
        " next_run_at = CASE WHEN %s THEN next_run_at ELSE %s END"
        " WHERE tenant_id = %s AND connector_id = %s AND lease_owner = %s",
        [failures, keep_next, next_run_at, tenant_id, connector_id, node],
    )


# -- what crawls saw (as the tenant) -----------------------------------------------------------------


async def fingerprints(conn: Conn, tenant_id: str, connector_id: UUID) -> dict[str, str]:
    cur = await conn.execute(
        "SELECT qualified_name, fingerprint FROM connector_objects WHERE tenant_id = %s AND connector_id = %s",
        [tenant_id, connector_id],
    )
    return {r["qualified_name"]: r["fingerprint"] for r in await cur.fetchall()}


async def record_seen(
    conn: Conn, tenant_id: str, connector_id: UUID, seen: Mapping[str, str], removed: Sequence[str]
) -> None:
    if seen:
        names, digests = list(seen), list(seen.values())
        await conn.execute(
            "INSERT INTO connector_objects (tenant_id, connector_id, qualified_name, fingerprint)"
            " SELECT %s, %s, n, f FROM unnest(%s::text[], %s::text[]) AS t(n, f)"
            " ON CONFLICT (tenant_id, connector_id, qualified_name)"
            " DO UPDATE SET fingerprint = excluded.fingerprint, seen_at = now()",
            [tenant_id, connector_id, names, digests],
        )
    if removed:
        await conn.execute(
            "DELETE FROM connector_objects WHERE tenant_id = %s AND connector_id = %s"
            " AND qualified_name = ANY(%s::text[])",
            [tenant_id, connector_id, list(removed)],
        )


def _json(value: Mapping[str, Any] | None) -> Jsonb | None:
    return Jsonb(dict(value)) if value is not None else None


# -- the tenant's sources and channels (as the tenant) -------------------------------------------------


async def channels_with_health(conn: Conn, tenant_id: str) -> list[dict[str, Any]] | None:
    """The tenant's outbound channels with their delivery health; None where the notifications
    schema (migration 0010) is not installed."""
    cur = await conn.execute("SELECT to_regclass('notification_channels') IS NOT NULL AS present")
    row = await cur.fetchone()
    if not row or not row["present"]:
        return None
    cur = await conn.execute(
        "SELECT c.channel_id, c.name, c.type, c.enabled, c.disabled_reason, c.created_at,"
        " d.pending, d.dead, d.last_delivered_at, f.last_error, f.last_failed_at"
        " FROM notification_channels c"
        " LEFT JOIN LATERAL (SELECT count(*) FILTER (WHERE x.state = 'pending') AS pending,"
        "   count(*) FILTER (WHERE x.state = 'dead') AS dead, max(x.delivered_at) AS last_delivered_at"
        "   FROM deliveries x WHERE x.tenant_id = c.tenant_id AND x.channel_id = c.channel_id) d ON true"
        " LEFT JOIN LATERAL (SELECT x.last_error, x.updated_at AS last_failed_at FROM deliveries x"
        "   WHERE x.tenant_id = c.tenant_id AND x.channel_id = c.channel_id AND x.last_error IS NOT NULL"
        "   ORDER BY x.updated_at DESC LIMIT 1) f ON true"
        " WHERE c.tenant_id = %s ORDER BY c.created_at, c.channel_id",
        [tenant_id],
    )
    return await cur.fetchall()
