"""The CDC consumers' leases on connector instances (table ``connectors``, migration 0011).

A CDC consumer holds its connector's lease — the same lease a crawl run takes, so a fallback crawl and
the consumer never run at once — for as long as it streams, renewing it with
:func:`lily.store.connectors.renew_lease`. Claiming runs as ``lily_pipeline`` across tenants.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from lily.store.db import Conn


async def claim(conn: Conn, kind: str, node: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
    """Take the free leases of up to ``limit`` enabled instances of ``kind`` that have a slot to stream
    from (``state.slot``) and no run waiting: (tenant_id, connector_id) of each."""
    if limit <= 0:
        return []
    cur = await conn.execute(
        "WITH picked AS ("
        "  SELECT c.tenant_id, c.connector_id FROM connectors c"
        "  WHERE c.kind = %s AND c.active AND c.direction = 'inbound' AND c.state ? 'slot'"
        "  AND (c.lease_until IS NULL OR c.lease_until < now())"
        "  AND NOT EXISTS (SELECT 1 FROM connector_runs r WHERE r.tenant_id = c.tenant_id"
        "   AND r.connector_id = c.connector_id AND r.state IN ('queued', 'running'))"
        "  ORDER BY c.lease_until NULLS FIRST LIMIT %s FOR UPDATE OF c SKIP LOCKED)"
        " UPDATE connectors c SET lease_owner = %s, lease_until = now() + make_interval(secs => %s)"
        " FROM picked p WHERE c.tenant_id = p.tenant_id AND c.connector_id = p.connector_id"
        " RETURNING c.tenant_id, c.connector_id",
        [kind, limit, node, lease_seconds],
    )
    return await cur.fetchall()


async def claim_idle(conn: Conn, kind: str, node: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
    """Take the free leases of disabled instances of ``kind`` that still hold a slot nobody has read for
    longer than their ``max_down_seconds`` (default 3600): the slot must go, or the source keeps WAL."""
    cur = await conn.execute(
        "WITH picked AS ("
        "  SELECT c.tenant_id, c.connector_id FROM connectors c"
        "  WHERE c.kind = %s AND NOT c.active AND c.direction = 'inbound' AND c.state ? 'slot'"
        "  AND (c.lease_until IS NULL OR c.lease_until < now())"
        "  AND coalesce(c.state->>'confirmed_at', c.state->>'since')::timestamptz"
        "      < now() - make_interval(secs => coalesce((c.config->>'max_down_seconds')::int, 3600))"
        "  LIMIT %s FOR UPDATE OF c SKIP LOCKED)"
        " UPDATE connectors c SET lease_owner = %s, lease_until = now() + make_interval(secs => %s)"
        " FROM picked p WHERE c.tenant_id = p.tenant_id AND c.connector_id = p.connector_id"
        " RETURNING c.tenant_id, c.connector_id",
        [kind, limit, node, lease_seconds],
    )
    return await cur.fetchall()


async def needing_crawl(conn: Conn, kind: str, limit: int) -> list[dict[str, Any]]:
    """Enabled instances of ``kind`` with no slot yet (new, or fallen back) and no run waiting or
    running: each needs a crawl, which creates its slot first."""
    cur = await conn.execute(
        "SELECT c.tenant_id, c.connector_id FROM connectors c"
        " WHERE c.kind = %s AND c.active AND c.direction = 'inbound' AND NOT c.state ? 'slot'"
        " AND (c.lease_until IS NULL OR c.lease_until < now())"
        " AND NOT EXISTS (SELECT 1 FROM connector_runs r WHERE r.tenant_id = c.tenant_id"
        "  AND r.connector_id = c.connector_id AND r.state IN ('queued', 'running'))"
        " AND (c.next_run_at IS NULL OR c.next_run_at > now())"
        " LIMIT %s",
        [kind, limit],
    )
    return await cur.fetchall()


async def release(conn: Conn, tenant_id: str, connector_id: UUID, node: str) -> None:
    await conn.execute(
        "UPDATE connectors SET lease_owner = NULL, lease_until = NULL"
        " WHERE tenant_id = %s AND connector_id = %s AND lease_owner = %s",
        [tenant_id, connector_id, node],
    )


async def holds_lease(conn: Conn, tenant_id: str, connector_id: UUID, node: str) -> dict[str, Any] | None:
    """The instance's row (active, config, state) while ``node`` holds its lease; None otherwise."""
    cur = await conn.execute(
        "SELECT active, kind, config, config_sealed, state, lease_until > now() AS leased FROM connectors"
        " WHERE tenant_id = %s AND connector_id = %s AND lease_owner = %s",
        [tenant_id, connector_id, node],
    )
    return await cur.fetchone()
