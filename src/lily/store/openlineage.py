"""The reads the Marquez-compatible lineage endpoint needs beyond :mod:`lily.store.lineage`.

A job is a *process* on Lily's edges, never an endpoint, so a walk from a job has to start from the
edges it carries (``lineage_edges_process`` index). Every statement names ``tenant_id`` on top of RLS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.rows import tuple_row

from lily.store.assets import ASSET_COLUMNS
from lily.store.db import Conn


async def assets_by_ids(conn: Conn, tenant_id: str, ids: Sequence[UUID]) -> dict[UUID, dict[str, Any]]:
    """Full rows (attributes included; deleted ones too) for these ids, keyed by id."""
    if not ids:
        return {}
    cur = await conn.execute(
        f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s AND asset_id = ANY(%s::uuid[])",
        [tenant_id, list(ids)],
    )
    return {row["asset_id"]: row for row in await cur.fetchall()}


async def process_edges(conn: Conn, tenant_id: str, process_id: UUID, limit: int) -> list[tuple[UUID, UUID]]:
    """(upstream, downstream) of the edges ``process_id`` carries, at most ``limit`` of them."""
    cur = await conn.cursor(row_factory=tuple_row).execute(
        "SELECT upstream_id, downstream_id FROM lineage_edges"
        " WHERE tenant_id = %s AND process_id = %s ORDER BY upstream_id, downstream_id LIMIT %s",
        [tenant_id, process_id, limit],
    )
    return [(row[0], row[1]) for row in await cur.fetchall()]
