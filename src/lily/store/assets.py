"""Assets, their versions and their audit trail in SQL.

The column lists, the ``jsonb_to_recordset`` record and the upsert are derived from the fields of
:class:`lily.domain.assets.Asset`: a new asset field needs the schema and the model, and a new version of
the point read's SQL function (``lily_read_asset``), whose columns a test holds to these fields.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Union, get_args, get_origin, get_type_hints
from uuid import UUID

from psycopg.rows import class_row, tuple_row
from psycopg.types.json import Jsonb

from lily.domain.access import Caller
from lily.domain.assets import ASSET_FIELDS, Asset
from lily.domain.audit import AuditEntry
from lily.store.audit import write_audit
from lily.store.db import Conn, caller_arguments, insert_rows

_SQL_TYPES: dict[Any, str] = {
    UUID: "uuid",
    str: "text",
    bool: "boolean",
    int: "integer",
    datetime: "timestamptz",
    dict: "jsonb",
    list: "text[]",  # Asset's lists are lists of text (owners, tags)
}


def _sql_type(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    return _SQL_TYPES[get_origin(hint) or hint]


ASSET_COLUMNS = ", ".join(ASSET_FIELDS)
# The shape of one asset in the JSON document ``write`` sends (``jsonb_to_recordset`` column list).
_ASSET_RECORD = ", ".join(f"{name} {_sql_type(hint)}" for name, hint in get_type_hints(Asset).items())
# What a later version may change: everything but the identity, the creation time and the
# classifications (kept by the classification handler alone, from its table, in its own statement).
_UPDATED = ", ".join(
    f"{c} = EXCLUDED.{c}"
    for c in ASSET_FIELDS
    if c not in ("asset_id", "qualified_name", "created_at", "classifications")
)
_UPSERT = (
    f"INSERT INTO assets (tenant_id, {ASSET_COLUMNS})"
    f" SELECT %s, {', '.join('r.' + c for c in ASSET_FIELDS)}"
    f" FROM jsonb_to_recordset(%s::jsonb) AS r({_ASSET_RECORD})"
    f" ON CONFLICT (tenant_id, qualified_name) DO UPDATE SET {_UPDATED}"
)
_AS_ASSET = class_row(Asset)


async def current_by_names(conn: Conn, tenant_id: str, names: Sequence[str]) -> dict[str, Asset]:
    """Current rows (deleted ones too) for these qualified names, keyed by name."""
    cur = conn.cursor(row_factory=_AS_ASSET)
    await cur.execute(
        f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s AND qualified_name = ANY(%s)",
        [tenant_id, list(names)],
    )
    return {asset.qualified_name: asset for asset in await cur.fetchall()}


# A point read by primary key, whose deleted row is dropped here rather than by ``deleted_at IS NULL``:
# that condition matches the partial indexes' predicate, and on a table not yet analyzed (autovacuum off,
# or not yet run after a load) the planner priced a scan of the tenant's slice of ``assets_qn_prefix``
# the same as the primary key and took it, filtering every asset of the tenant on each read.
_BY_ID = f"SELECT {ASSET_COLUMNS} FROM assets WHERE tenant_id = %s AND asset_id = %s"


def _live_unless(asset: Asset | None, include_deleted: bool) -> Asset | None:
    return asset if asset is None or include_deleted or asset.live else None


async def get(conn: Conn, tenant_id: str, asset_id: UUID, *, include_deleted: bool = False) -> Asset | None:
    cur = conn.cursor(row_factory=_AS_ASSET)
    await cur.execute(_BY_ID, [tenant_id, asset_id])
    return _live_unless(await cur.fetchone(), include_deleted)


async def write(
    conn: Conn,
    tenant_id: str,
    assets: list[Asset],
    versions: list[dict[str, Any]],
    audits: Sequence[AuditEntry],
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
            # orjson (the store's JSON dumper) serialises the slots dataclasses as they are.
            await conn.execute(_UPSERT, [tenant_id, Jsonb(assets)])
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


# The columns of a version in ``history`` and in :func:`read_with_history`.
_HISTORY_FIELDS = (
    "version", "action", "changes", "snapshot", "actor", "request_id", "event_id", "origin", "changed_at"
)  # fmt: skip
_NEWEST = 2**31 - 1  # older than this: from the newest version on


async def history(
    conn: Conn, tenant_id: str, asset_id: UUID, *, before_version: int | None, limit: int
) -> list[dict[str, Any]]:
    """Versions newest first, ``limit`` of them, older than ``before_version`` when given."""
    cur = await conn.execute(
        f"SELECT {', '.join(_HISTORY_FIELDS)} FROM asset_versions"
        " WHERE tenant_id = %s AND asset_id = %s AND version < %s ORDER BY version DESC LIMIT %s",
        [tenant_id, asset_id, before_version or _NEWEST, limit],
    )
    return await cur.fetchall()


_ASSET_END = 1 + len(ASSET_FIELDS)  # lily_read_asset's columns: the auth epoch, the asset's, a version's


async def read_with_history(
    conn: Conn,
    tenant_id: str,
    caller: Caller | None,
    asset_id: UUID,
    *,
    include_deleted: bool,
    before_version: int | None,
    limit: int,
) -> tuple[int | None, tuple[Asset | None, list[dict[str, Any]]]]:
    """The tenant's auth epoch (None once it is deleted), and the asset as ``caller`` sees it with a page
    of its history (:func:`get` and :func:`history`), in one statement (``lily_read_asset``, migration 0023).
    ``conn`` must be outside any transaction. A new asset field needs a new version of that function."""
    role, names = caller_arguments(caller)
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(
        "SELECT * FROM lily_read_asset(%s, %s, %s, %s, %s, %s)",
        [tenant_id, role, names, asset_id, before_version or _NEWEST, limit],
    )
    first, *versions = await cur.fetchall()
    asset = None if first[1] is None else Asset(*first[1:_ASSET_END])
    history = [dict(zip(_HISTORY_FIELDS, row[_ASSET_END:], strict=True)) for row in versions]
    return first[0], (_live_unless(asset, include_deleted), history)


async def exists_ever(conn: Conn, tenant_id: str, asset_id: UUID) -> bool:
    cur = await conn.execute("SELECT 1 FROM assets WHERE tenant_id = %s AND asset_id = %s", [tenant_id, asset_id])
    return await cur.fetchone() is not None


async def insert_placeholders(conn: Conn, tenant_id: str, placeholders: list[Asset]) -> list[Asset]:
    """Create placeholder assets for names nobody has written yet; returns the ones this call created.

    ON CONFLICT DO NOTHING: if the real asset (or another placeholder) got there first, it stays as is.
    """
    if not placeholders:
        return []
    cur = conn.cursor(row_factory=_AS_ASSET)
    await cur.execute(
        f"INSERT INTO assets (tenant_id, {ASSET_COLUMNS})"
        f" SELECT %s, {', '.join('r.' + c for c in ASSET_FIELDS)}"
        f" FROM jsonb_to_recordset(%s::jsonb) AS r({_ASSET_RECORD})"
        f" ON CONFLICT DO NOTHING RETURNING {ASSET_COLUMNS}",
        [tenant_id, Jsonb(placeholders)],
    )
    return await cur.fetchall()


async def passive_assets(conn: Conn, tenant_id: str, asset_ids: Sequence[UUID]) -> list[str]:
    """Qualified names of the live assets among ``asset_ids`` with no active source of their own."""
    cur = await conn.execute(
        "SELECT qualified_name FROM assets WHERE tenant_id = %s AND asset_id = ANY(%s)"
        " AND deleted_at IS NULL AND NOT has_active_source",
        [tenant_id, list(asset_ids)],
    )
    return [row["qualified_name"] for row in await cur.fetchall()]
