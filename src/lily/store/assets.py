"""Assets, their versions and their audit trail in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from lily.store.audit import write_audit
from lily.store.db import Conn, insert_rows

# The shape of one asset in the JSON document ``write`` sends (``jsonb_to_recordset`` column list).
_ASSET_RECORD = (
    "asset_id uuid, qualified_name text, type text, name text, description text, owners text[], tags text[],"
    " attributes jsonb, placeholder boolean, version integer, created_at timestamptz, updated_at timestamptz,"
    " deleted_at timestamptz"
)
_ASSET_FIELDS = tuple(part.split()[0] for part in _ASSET_RECORD.split(","))

ASSET_COLUMNS = (
    "asset_id, qualified_name, type, name, description, owners, tags, attributes, placeholder, version,"
    " created_at, updated_at, deleted_at"
)


async def current_by_names(conn: Conn, tenant_id: str, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Current rows (deleted ones too) for these qualified names, keyed by name."""
    cur = await conn.execute(
        f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s AND qualified_name = ANY(%s)",
        [tenant_id, list(names)],
    )
    return {row["qualified_name"]: row for row in await cur.fetchall()}


async def get(conn: Conn, tenant_id: str, asset_id: UUID, *, include_deleted: bool = False) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s AND asset_id = %s"
        + ("" if include_deleted else " AND deleted_at IS NULL"),
        [tenant_id, asset_id],
    )
    return await cur.fetchone()


async def write(
    conn: Conn,
    tenant_id: str,
    assets: list[dict[str, Any]],
    versions: list[dict[str, Any]],
    audits: list[dict[str, Any]],
) -> None:
    """Write a batch of changes as sets: the assets' new state, one version row and one audit row each.

    The assets go in as one ``INSERT … SELECT FROM jsonb_to_recordset(…) ON CONFLICT DO UPDATE``: a
    single statement per batch instead of one per row (executemany), and one JSON document instead of
    per-column arrays, since ``owners``/``tags`` are arrays themselves and ``unnest`` would flatten them.
    The caller guarantees distinct names in a batch, so no row is updated twice by one statement.
    """
    # One round trip for the three statements: they do not depend on each other's results, and the
    # pipeline mode sends them back to back (errors still surface, at the end of the block).
    async with conn.pipeline():
        if assets:
            await conn.execute(
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, description, owners,"
                " tags, attributes, placeholder, version, created_at, updated_at, deleted_at)"
                " SELECT %s, r.asset_id, r.qualified_name, r.type, r.name, r.description,"
                " coalesce(r.owners, '{}'), coalesce(r.tags, '{}'), coalesce(r.attributes, '{}'), r.placeholder,"
                " r.version, r.created_at, r.updated_at, r.deleted_at"
                f" FROM jsonb_to_recordset(%s::jsonb) AS r({_ASSET_RECORD})"
                " ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET type = EXCLUDED.type,"
                " name = EXCLUDED.name, description = EXCLUDED.description, owners = EXCLUDED.owners,"
                " tags = EXCLUDED.tags, attributes = EXCLUDED.attributes,"
                " placeholder = EXCLUDED.placeholder, version = EXCLUDED.version,"
                " updated_at = EXCLUDED.updated_at, deleted_at = EXCLUDED.deleted_at",
                [tenant_id, Jsonb([{c: a[c] for c in _ASSET_FIELDS} for a in assets])],
            )
        await insert_rows(
            conn,
            "asset_versions",
            (
                "tenant_id",
                "asset_id",
                "version",
                "action",
                "snapshot",
                "changes",
                "actor",
                "event_id",
                "request_id",
                "origin",
                "changed_at",
            ),
            ("text", "uuid", "int4", "text", "jsonb", "jsonb", "text", "uuid", "text", "jsonb", "timestamptz"),
            [
                (
                    tenant_id,
                    v["asset_id"],
                    v["version"],
                    v["action"],
                    v["snapshot"],
                    v["changes"],
                    v["actor"],
                    v["event_id"],
                    v["request_id"],
                    v.get("origin"),
                    v["changed_at"],
                )
                for v in versions
            ],
        )
        if audits:
            await write_audit(conn, tenant_id, audits)


async def version_snapshot(conn: Conn, tenant_id: str, asset_id: UUID, version: int) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT snapshot FROM asset_versions WHERE tenant_id = %s AND asset_id = %s AND version = %s",
        [tenant_id, asset_id, version],
    )
    row = await cur.fetchone()
    return None if row is None else row["snapshot"]


async def history(
    conn: Conn, tenant_id: str, asset_id: UUID, *, before_version: int | None, limit: int
) -> list[dict[str, Any]]:
    """Versions newest first, ``limit`` of them, older than ``before_version`` when given."""
    cur = await conn.execute(
        "SELECT version, action, changes, snapshot, actor, request_id, event_id, origin, changed_at"
        " FROM asset_versions WHERE tenant_id = %s AND asset_id = %s AND version < %s"
        " ORDER BY version DESC LIMIT %s",
        [tenant_id, asset_id, before_version or 2**31 - 1, limit],
    )
    return await cur.fetchall()


async def exists_ever(conn: Conn, tenant_id: str, asset_id: UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM assets WHERE tenant_id = %s AND asset_id = %s", [tenant_id, asset_id])
    return await cur.fetchone() is not None


async def search(
    conn: Conn,
    tenant_id: str,
    *,
    q: str | None,
    qualified_name: str | None,
    types: Sequence[str],
    tags: Sequence[str],
    after: tuple[float, str] | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Live assets matching every filter given. With ``q``, ranked by relevance; else by asset id.

    The cursor is (rank, asset_id) of the last row seen, so pages are stable under equal ranks.
    """
    where = ["tenant_id = %(tenant)s", "deleted_at IS NULL"]
    params: dict[str, Any] = {"tenant": tenant_id, "limit": limit}
    if qualified_name is not None:
        where.append("qualified_name = %(qn)s")
        params["qn"] = qualified_name
    if types:
        where.append("type = ANY(%(types)s)")
        params["types"] = list(types)
    if tags:
        where.append("tags @> %(tags)s")
        params["tags"] = list(tags)
    if q:
        where.append("search @@ websearch_to_tsquery('simple', %(q)s)")
        params["q"] = q
        rank = "ts_rank_cd(search, websearch_to_tsquery('simple', %(q)s))::float8"
    else:
        rank = "0::float8"
    if after is not None:
        where.append(f"({rank}, asset_id::text) < (%(after_rank)s, %(after_id)s)")
        params["after_rank"], params["after_id"] = after
    cur = await conn.execute(
        f"SELECT {ASSET_COLUMNS}, {rank} AS rank FROM assets WHERE {' AND '.join(where)}"
        f" ORDER BY rank DESC, asset_id::text DESC LIMIT %(limit)s",
        params,
    )
    return await cur.fetchall()


async def insert_placeholders(conn: Conn, tenant_id: str, placeholders: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Create placeholder assets for names nobody has written yet; returns the ones this call created.

    ON CONFLICT DO NOTHING: if the real asset (or another placeholder) got there first, it stays as is.
    """
    if not placeholders:
        return []
    cur = await conn.execute(
        "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, placeholder, version,"
        " created_at, updated_at)"
        " SELECT %s, * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::bool[], %s::int4[],"
        " %s::timestamptz[], %s::timestamptz[])"
        f" ON CONFLICT DO NOTHING RETURNING {ASSET_COLUMNS}",
        [
            tenant_id,
            *(
                [p[c] for p in placeholders]
                for c in (
                    "asset_id",
                    "qualified_name",
                    "type",
                    "name",
                    "placeholder",
                    "version",
                    "created_at",
                    "updated_at",
                )
            ),
        ],
    )
    return await cur.fetchall()


async def passive_assets(
    conn: Conn, tenant_id: str, asset_ids: Sequence[UUID], source_attribute: str, passive: Sequence[str]
) -> list[str]:
    """Qualified names of the live assets among ``asset_ids`` with no active source of their own."""
    cur = await conn.execute(
        "SELECT qualified_name FROM assets WHERE tenant_id = %s AND asset_id = ANY(%s) AND deleted_at IS NULL"
        " AND (attributes->>%s IS NULL OR attributes->>%s = ANY(%s))",
        [tenant_id, list(asset_ids), source_attribute, source_attribute, list(passive)],
    )
    return [row["qualified_name"] for row in await cur.fetchall()]
