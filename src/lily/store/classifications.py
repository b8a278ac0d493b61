"""Classifications in SQL: the rows of each place (an asset or one of its columns), steward removals, the
tenant taxonomy, the lineage steps propagation takes, and ``assets.classifications``.

Writes run only in the pipeline (the classification handler), in the worker's transaction. A place is
``(asset_id, column)`` with ``column`` None for the asset itself; SQL compares columns through
``coalesce(column_name, '')``, the form the unique indexes use. Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from lily.store.db import Conn

_NIL = "00000000-0000-0000-0000-000000000000"
_COLS = (
    "asset_id, column_name, classification, source, origin_asset_id, origin_column, via_asset_id, via_column,"
    " distance, confidence, propagate, applied_by, applied_at, detail"
)


@dataclass(slots=True)
class Row:
    """One way a place carries a classification (see migration 0007)."""

    asset_id: UUID
    column: str | None
    classification: str
    source: str
    origin_asset_id: UUID | None = None
    origin_column: str | None = None
    via_asset_id: UUID | None = None
    via_column: str | None = None
    distance: int | None = None
    confidence: float = 1.0
    propagate: bool = False
    applied_by: str = ""
    applied_at: datetime | None = None
    detail: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """What an audit entry, a version's changes and a change event say about the row."""
        out: dict[str, Any] = {"classification": self.classification, "column": self.column, "source": self.source}
        if self.origin_asset_id is not None:
            out["propagated_from"] = {
                "asset_id": str(self.origin_asset_id),
                "column": self.origin_column,
                "distance": self.distance,
                "via": {"asset_id": str(self.via_asset_id), "column": self.via_column},
            }
        return out


def _row(r: dict[str, Any]) -> Row:
    return Row(
        r["asset_id"],
        r["column_name"],
        r["classification"],
        r["source"],
        r["origin_asset_id"],
        r["origin_column"],
        r["via_asset_id"],
        r["via_column"],
        r["distance"],
        r["confidence"],
        r["propagate"],
        r["applied_by"],
        r["applied_at"],
        r["detail"],
    )


async def of_asset(conn: Conn, tenant_id: str, asset_id: UUID) -> list[Row]:
    """Every row of the asset and its columns: the asset's first, then by column, name, source."""
    cur = await conn.execute(
        f"SELECT {_COLS} FROM classifications WHERE tenant_id = %s AND asset_id = %s"
        " ORDER BY column_name NULLS FIRST, classification, source, distance NULLS FIRST, classification_id",
        [tenant_id, asset_id],
    )
    return [_row(r) for r in await cur.fetchall()]


async def at(conn: Conn, tenant_id: str, asset_id: UUID, column: str | None, classification: str) -> list[Row]:
    """The rows by which one place carries one classification (locked: the caller changes them)."""
    cur = await conn.execute(
        f"SELECT {_COLS} FROM classifications WHERE tenant_id = %s AND asset_id = %s"
        " AND coalesce(column_name, '') = coalesce(%s, '') AND classification = %s FOR UPDATE",
        [tenant_id, asset_id, column, classification],
    )
    return [_row(r) for r in await cur.fetchall()]


async def at_many(
    conn: Conn, tenant_id: str, asset_id: UUID, keys: Sequence[tuple[str | None, str]]
) -> dict[tuple[str | None, str], list[Row]]:
    """:func:`at` for several (column, name) of one asset in one query, keyed by (column, name)."""
    cur = await conn.execute(
        f"SELECT {_COLS} FROM classifications c WHERE c.tenant_id = %s AND c.asset_id = %s"
        " AND (coalesce(c.column_name, ''), c.classification) IN ("
        "  SELECT coalesce(k.col, ''), k.name FROM jsonb_to_recordset(%s::jsonb) AS k(col text, name text))"
        " FOR UPDATE",
        [tenant_id, asset_id, Jsonb([{"col": c, "name": n} for c, n in keys])],
    )
    out: dict[tuple[str | None, str], list[Row]] = {k: [] for k in keys}
    for r in await cur.fetchall():
        row = _row(r)
        out.setdefault((row.column, row.classification), []).append(row)
    return out


async def removed_many(
    conn: Conn, tenant_id: str, asset_id: UUID, keys: Sequence[tuple[str | None, str]]
) -> set[tuple[str | None, str]]:
    """Which (column, name) of one asset a steward removed."""
    cur = await conn.execute(
        "SELECT column_name, classification FROM classification_removals r WHERE r.tenant_id = %s"
        " AND r.asset_id = %s AND (coalesce(r.column_name, ''), r.classification) IN ("
        "  SELECT coalesce(k.col, ''), k.name FROM jsonb_to_recordset(%s::jsonb) AS k(col text, name text))",
        [tenant_id, asset_id, Jsonb([{"col": c, "name": n} for c, n in keys])],
    )
    return {(r["column_name"], r["classification"]) for r in await cur.fetchall()}


async def at_across(
    conn: Conn, tenant_id: str, keys: Sequence[tuple[UUID, str | None, str]]
) -> dict[UUID, dict[tuple[str | None, str], list[Row]]]:
    """:func:`at_many` for several assets in one query: keyed by asset, then (column, name)."""
    cur = await conn.execute(
        f"SELECT {_COLS} FROM classifications c WHERE c.tenant_id = %s"
        " AND (c.asset_id, coalesce(c.column_name, ''), c.classification) IN ("
        "  SELECT k.asset_id, coalesce(k.col, ''), k.name"
        "  FROM jsonb_to_recordset(%s::jsonb) AS k(asset_id uuid, col text, name text))"
        " FOR UPDATE",
        [tenant_id, Jsonb([{"asset_id": str(a), "col": c, "name": n} for a, c, n in keys])],
    )
    out: dict[UUID, dict[tuple[str | None, str], list[Row]]] = {}
    for asset_id, column, name in keys:
        out.setdefault(asset_id, {})[(column, name)] = []
    for r in await cur.fetchall():
        row = _row(r)
        out[row.asset_id].setdefault((row.column, row.classification), []).append(row)
    return out


async def removed_across(
    conn: Conn, tenant_id: str, keys: Sequence[tuple[UUID, str | None, str]]
) -> dict[UUID, set[tuple[str | None, str]]]:
    """:func:`removed_many` for several assets in one query, keyed by asset."""
    cur = await conn.execute(
        "SELECT asset_id, column_name, classification FROM classification_removals r WHERE r.tenant_id = %s"
        " AND (r.asset_id, coalesce(r.column_name, ''), r.classification) IN ("
        "  SELECT k.asset_id, coalesce(k.col, ''), k.name"
        "  FROM jsonb_to_recordset(%s::jsonb) AS k(asset_id uuid, col text, name text))",
        [tenant_id, Jsonb([{"asset_id": str(a), "col": c, "name": n} for a, c, n in keys])],
    )
    out: dict[UUID, set[tuple[str | None, str]]] = {a: set() for a, _, _ in keys}
    for r in await cur.fetchall():
        out[r["asset_id"]].add((r["column_name"], r["classification"]))
    return out


async def insert_propagated(conn: Conn, tenant_id: str, rows: Sequence[Row], event_id: UUID) -> None:
    """Add propagated rows in one statement (the caller knows they are new; a duplicate is skipped)."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO classifications (tenant_id, asset_id, column_name, classification, source, origin_asset_id,"
        " origin_column, via_asset_id, via_column, distance, confidence, propagate, applied_by, applied_at,"
        " event_id)"
        " SELECT %s, r.asset_id, r.col, r.name, 'propagated', r.origin_asset_id, r.origin_column, r.via_asset_id,"
        " r.via_column, r.distance, r.confidence, true, r.applied_by, r.applied_at, %s"
        " FROM jsonb_to_recordset(%s::jsonb) AS r(asset_id uuid, col text, name text, origin_asset_id uuid,"
        " origin_column text, via_asset_id uuid, via_column text, distance integer, confidence double precision,"
        " applied_by text, applied_at timestamptz) ON CONFLICT DO NOTHING",
        [
            tenant_id,
            event_id,
            Jsonb(
                [
                    {
                        "asset_id": r.asset_id,
                        "col": r.column,
                        "name": r.classification,
                        "origin_asset_id": r.origin_asset_id,
                        "origin_column": r.origin_column,
                        "via_asset_id": r.via_asset_id,
                        "via_column": r.via_column,
                        "distance": r.distance,
                        "confidence": r.confidence,
                        "applied_by": r.applied_by,
                        "applied_at": r.applied_at,
                    }
                    for r in rows
                ]
            ),
        ],
    )


async def insert(conn: Conn, tenant_id: str, row: Row, event_id: UUID) -> bool:
    """Add ``row``; False when that very row (place, name, source, path) exists already.

    A manual or external row given again takes the new ``propagate`` and ``confidence`` (and counts as
    unchanged unless they differ)."""
    cur = await conn.execute(
        "INSERT INTO classifications (tenant_id, asset_id, column_name, classification, source, origin_asset_id,"
        " origin_column, via_asset_id, via_column, distance, confidence, propagate, applied_by, applied_at,"
        " event_id, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, asset_id, (coalesce(column_name, '')), classification, source,"
        f" (coalesce(origin_asset_id, '{_NIL}'::uuid)), (coalesce(origin_column, '')),"
        f" (coalesce(via_asset_id, '{_NIL}'::uuid)), (coalesce(via_column, '')))"
        " DO UPDATE SET propagate = EXCLUDED.propagate, confidence = EXCLUDED.confidence,"
        " applied_by = EXCLUDED.applied_by, applied_at = EXCLUDED.applied_at, event_id = EXCLUDED.event_id"
        " WHERE classifications.source IN ('manual', 'external')"
        " AND (classifications.propagate, classifications.confidence)"
        " IS DISTINCT FROM (EXCLUDED.propagate, EXCLUDED.confidence)"
        " RETURNING (xmax = 0) AS inserted",
        [
            tenant_id,
            row.asset_id,
            row.column,
            row.classification,
            row.source,
            row.origin_asset_id,
            row.origin_column,
            row.via_asset_id,
            row.via_column,
            row.distance,
            row.confidence,
            row.propagate,
            row.applied_by,
            row.applied_at,
            event_id,
            Jsonb(row.detail or {}),
        ],
    )
    return await cur.fetchone() is not None


async def delete(conn: Conn, tenant_id: str, rows: Sequence[Row]) -> None:
    """Remove exactly these rows (as :func:`at` or :func:`of_asset` read them), in one statement."""
    if not rows:
        return
    await conn.execute(
        "DELETE FROM classifications c USING jsonb_to_recordset(%s::jsonb) AS r(asset_id uuid, col text,"
        " name text, source text, origin_asset_id uuid, origin_column text, via_asset_id uuid, via_column text)"
        " WHERE c.tenant_id = %s AND c.asset_id = r.asset_id AND coalesce(c.column_name, '') = coalesce(r.col, '')"
        " AND c.classification = r.name AND c.source = r.source"
        " AND c.origin_asset_id IS NOT DISTINCT FROM r.origin_asset_id"
        " AND c.origin_column IS NOT DISTINCT FROM r.origin_column"
        " AND c.via_asset_id IS NOT DISTINCT FROM r.via_asset_id AND c.via_column IS NOT DISTINCT FROM r.via_column",
        [
            Jsonb(
                [
                    {
                        "asset_id": r.asset_id,
                        "col": r.column,
                        "name": r.classification,
                        "source": r.source,
                        "origin_asset_id": r.origin_asset_id,
                        "origin_column": r.origin_column,
                        "via_asset_id": r.via_asset_id,
                        "via_column": r.via_column,
                    }
                    for r in rows
                ]
            ),
            tenant_id,
        ],
    )


async def refresh(conn: Conn, tenant_id: str, asset_id: UUID) -> list[str]:
    """Rewrite ``assets.classifications`` from the rows (parents expanded); the new value."""
    cur = await conn.execute(
        "UPDATE assets a SET classifications = lily_classification_closure(coalesce(ARRAY("
        "  SELECT DISTINCT c.classification FROM classifications c"
        "  WHERE c.tenant_id = a.tenant_id AND c.asset_id = a.asset_id), '{}'))"
        " WHERE a.tenant_id = %s AND a.asset_id = %s RETURNING a.classifications",
        [tenant_id, asset_id],
    )
    row = await cur.fetchone()
    return list(row["classifications"]) if row else []


# -- steward removals --------------------------------------------------------------------------------


async def removed(conn: Conn, tenant_id: str, asset_id: UUID, column: str | None, classification: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM classification_removals WHERE tenant_id = %s AND asset_id = %s"
        " AND coalesce(column_name, '') = coalesce(%s, '') AND classification = %s",
        [tenant_id, asset_id, column, classification],
    )
    return await cur.fetchone() is not None


async def record_removal(
    conn: Conn,
    tenant_id: str,
    asset_id: UUID,
    column: str | None,
    classification: str,
    by: str,
    at: datetime,
    event_id: UUID,
) -> None:
    await conn.execute(
        "INSERT INTO classification_removals (tenant_id, asset_id, column_name, classification, removed_by,"
        " removed_at, event_id) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, asset_id, (coalesce(column_name, '')), classification)"
        " DO UPDATE SET removed_by = EXCLUDED.removed_by, removed_at = EXCLUDED.removed_at,"
        " event_id = EXCLUDED.event_id",
        [tenant_id, asset_id, column, classification, by, at, event_id],
    )


async def lift_removal(conn: Conn, tenant_id: str, asset_id: UUID, column: str | None, classification: str) -> None:
    await conn.execute(
        "DELETE FROM classification_removals WHERE tenant_id = %s AND asset_id = %s"
        " AND coalesce(column_name, '') = coalesce(%s, '') AND classification = %s",
        [tenant_id, asset_id, column, classification],
    )


async def rule_state(
    conn: Conn, tenant_id: str, asset_ids: Sequence[UUID]
) -> dict[UUID, tuple[set[tuple[str | None, str]], set[tuple[str | None, str]]]]:
    """Per asset, the (column, name) pairs a rule carries and those a steward removed: what a
    classifier's proposals are compared with before the pipeline bothers with an event."""
    cur = await conn.execute(
        "SELECT true AS rule, asset_id, column_name, classification FROM classifications"
        " WHERE tenant_id = %s AND asset_id = ANY(%s) AND source = 'rule'"
        " UNION ALL SELECT false, asset_id, column_name, classification FROM classification_removals"
        " WHERE tenant_id = %s AND asset_id = ANY(%s)",
        [tenant_id, list(asset_ids), tenant_id, list(asset_ids)],
    )
    out: dict[UUID, tuple[set[tuple[str | None, str]], set[tuple[str | None, str]]]] = {}
    for r in await cur.fetchall():
        rules, removed = out.setdefault(r["asset_id"], (set(), set()))
        (rules if r["rule"] else removed).add((r["column_name"], r["classification"]))
    return out


# -- propagation -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Step:
    """One lineage step from a place: the downstream place and what the job on the edge blocks."""

    asset_id: UUID
    qualified_name: str
    column: str | None
    process_attributes: dict[str, Any] | None


async def steps(conn: Conn, tenant_id: str, asset_id: UUID, column: str | None) -> list[Step]:
    """The places one step downstream of a place: a column's derived columns (column lineage), or an
    asset's downstream assets (table lineage). Deleted assets are not reached."""
    if column is None:
        cur = await conn.execute(
            "SELECT d.asset_id, d.qualified_name, NULL::text AS column_name, p.attributes AS process_attributes"
            " FROM lineage_edges e"
            " JOIN assets d ON d.tenant_id = e.tenant_id AND d.asset_id = e.downstream_id AND d.deleted_at IS NULL"
            " LEFT JOIN assets p ON p.tenant_id = e.tenant_id AND p.asset_id = e.process_id"
            " WHERE e.tenant_id = %s AND e.upstream_id = %s",
            [tenant_id, asset_id],
        )
    else:
        cur = await conn.execute(
            "SELECT d.asset_id, d.qualified_name, cl.downstream_column AS column_name,"
            " p.attributes AS process_attributes"
            " FROM lineage_edges e"
            " JOIN column_lineage cl ON cl.tenant_id = e.tenant_id AND cl.edge_id = e.edge_id"
            "  AND cl.upstream_column = %s"
            " JOIN assets d ON d.tenant_id = e.tenant_id AND d.asset_id = e.downstream_id AND d.deleted_at IS NULL"
            " LEFT JOIN assets p ON p.tenant_id = e.tenant_id AND p.asset_id = e.process_id"
            " WHERE e.tenant_id = %s AND e.upstream_id = %s",
            [column, tenant_id, asset_id],
        )
    return [
        Step(r["asset_id"], r["qualified_name"], r["column_name"], r["process_attributes"])
        for r in await cur.fetchall()
    ]


async def column_steps(conn: Conn, tenant_id: str, asset_id: UUID, columns: Sequence[str]) -> dict[str, list[Step]]:
    """:func:`steps` for several columns of one asset in one query, keyed by column."""
    cur = await conn.execute(
        "SELECT cl.upstream_column, d.asset_id, d.qualified_name, cl.downstream_column AS column_name,"
        " p.attributes AS process_attributes"
        " FROM lineage_edges e"
        " JOIN column_lineage cl ON cl.tenant_id = e.tenant_id AND cl.edge_id = e.edge_id"
        "  AND cl.upstream_column = ANY(%s)"
        " JOIN assets d ON d.tenant_id = e.tenant_id AND d.asset_id = e.downstream_id AND d.deleted_at IS NULL"
        " LEFT JOIN assets p ON p.tenant_id = e.tenant_id AND p.asset_id = e.process_id"
        " WHERE e.tenant_id = %s AND e.upstream_id = %s",
        [list(columns), tenant_id, asset_id],
    )
    out: dict[str, list[Step]] = {c: [] for c in columns}
    for r in await cur.fetchall():
        out[r["upstream_column"]].append(
            Step(r["asset_id"], r["qualified_name"], r["column_name"], r["process_attributes"])
        )
    return out


async def columns_steps(
    conn: Conn, tenant_id: str, places: Sequence[tuple[UUID, str]]
) -> dict[tuple[UUID, str], list[Step]]:
    """:func:`column_steps` for columns of several assets in one query, keyed by (asset, column)."""
    cur = await conn.execute(
        "SELECT e.upstream_id, cl.upstream_column, d.asset_id, d.qualified_name, cl.downstream_column AS column_name,"
        " p.attributes AS process_attributes"
        " FROM (SELECT DISTINCT k.asset_id, k.col FROM jsonb_to_recordset(%s::jsonb) AS k(asset_id uuid, col text)) k"
        " JOIN lineage_edges e ON e.tenant_id = %s AND e.upstream_id = k.asset_id"
        " JOIN column_lineage cl ON cl.tenant_id = e.tenant_id AND cl.edge_id = e.edge_id"
        "  AND cl.upstream_column = k.col"
        " JOIN assets d ON d.tenant_id = e.tenant_id AND d.asset_id = e.downstream_id AND d.deleted_at IS NULL"
        " LEFT JOIN assets p ON p.tenant_id = e.tenant_id AND p.asset_id = e.process_id",
        [Jsonb([{"asset_id": str(a), "col": c} for a, c in places]), tenant_id],
    )
    out: dict[tuple[UUID, str], list[Step]] = {place: [] for place in places}
    for r in await cur.fetchall():
        out[(r["upstream_id"], r["upstream_column"])].append(
            Step(r["asset_id"], r["qualified_name"], r["column_name"], r["process_attributes"])
        )
    return out


@dataclass(frozen=True, slots=True)
class Carrier:
    """An upstream place that carries a name from an origin, one lineage step before a place."""

    asset_id: UUID
    column: str | None
    distance: int  # from the origin (0: the origin itself)
    confidence: float
    process_attributes: dict[str, Any] | None  # the job on the edge (what it blocks)


async def carriers_into(
    conn: Conn, tenant_id: str, asset_id: UUID, keys: Sequence[tuple[str | None, str, UUID, str | None]]
) -> dict[tuple[str | None, str, UUID, str | None], list[Carrier]]:
    """For each (column, name, origin asset, origin column) of one asset: the places one lineage step
    upstream of it (column lineage for a column, table lineage for the asset itself) whose propagating row
    of the name comes from that origin — or that are the origin, with its own propagating row — other
    than by way of this very place; live assets only, nearest to the origin first. One query."""
    cur = await conn.execute(
        "SELECT k.col AS place_column, k.name, k.oa, k.oc, c.asset_id, c.column_name,"
        " coalesce(c.distance, 0) AS distance, c.confidence, p.attributes AS process_attributes"
        " FROM jsonb_to_recordset(%(keys)s::jsonb) AS k(col text, name text, oa uuid, oc text)"
        " JOIN lineage_edges e ON e.tenant_id = %(t)s AND e.downstream_id = %(asset)s"
        " LEFT JOIN column_lineage cl ON k.col IS NOT NULL AND cl.tenant_id = e.tenant_id"
        "  AND cl.edge_id = e.edge_id AND cl.downstream_column = k.col"
        " JOIN assets u ON u.tenant_id = e.tenant_id AND u.asset_id = e.upstream_id AND u.deleted_at IS NULL"
        " JOIN classifications c ON c.tenant_id = e.tenant_id AND c.asset_id = e.upstream_id"
        "  AND c.column_name IS NOT DISTINCT FROM cl.upstream_column AND c.classification = k.name AND c.propagate"
        " LEFT JOIN assets p ON p.tenant_id = e.tenant_id AND p.asset_id = e.process_id"
        " WHERE (k.col IS NULL OR cl.edge_id IS NOT NULL)"
        "  AND ((c.source = 'propagated' AND c.origin_asset_id = k.oa AND c.origin_column IS NOT DISTINCT FROM k.oc"
        "        AND NOT (c.via_asset_id = %(asset)s AND c.via_column IS NOT DISTINCT FROM k.col))"
        "    OR (c.source <> 'propagated' AND c.asset_id = k.oa AND c.column_name IS NOT DISTINCT FROM k.oc))"
        " ORDER BY distance, c.asset_id, c.column_name",
        {
            "keys": Jsonb([{"col": c, "name": n, "oa": str(oa), "oc": oc} for c, n, oa, oc in keys]),
            "t": tenant_id,
            "asset": asset_id,
        },
    )
    out: dict[tuple[str | None, str, UUID, str | None], list[Carrier]] = {k: [] for k in keys}
    for r in await cur.fetchall():
        out[(r["place_column"], r["name"], r["oa"], r["oc"])].append(
            Carrier(r["asset_id"], r["column_name"], r["distance"], r["confidence"], r["process_attributes"])
        )
    return out


@dataclass(slots=True)
class Carried:
    """A downstream row that one place's classification put there (for retraction)."""

    asset_id: UUID
    qualified_name: str
    column: str | None


async def carried_from(
    conn: Conn,
    tenant_id: str,
    via_asset_id: UUID,
    via_column: str | None,
    classification: str,
    origin_asset_id: UUID,
    origin_column: str | None,
) -> list[Carried]:
    """The places holding ``classification`` from ``origin`` through the place ``via`` (their rows, not
    today's lineage: a retraction follows exactly where the classification went)."""
    cur = await conn.execute(
        "SELECT DISTINCT c.asset_id, a.qualified_name, c.column_name FROM classifications c"
        " JOIN assets a ON a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id"
        " WHERE c.tenant_id = %s AND c.via_asset_id = %s AND coalesce(c.via_column, '') = coalesce(%s, '')"
        " AND c.classification = %s AND c.origin_asset_id = %s"
        " AND coalesce(c.origin_column, '') = coalesce(%s, '') AND c.source = 'propagated'",
        [tenant_id, via_asset_id, via_column, classification, origin_asset_id, origin_column],
    )
    return [Carried(r["asset_id"], r["qualified_name"], r["column_name"]) for r in await cur.fetchall()]


async def carried_from_many(
    conn: Conn, tenant_id: str, via_asset_id: UUID, keys: Sequence[tuple[str | None, str, UUID, str | None]]
) -> dict[tuple[str | None, str, UUID, str | None], list[Carried]]:
    """:func:`carried_from` for several (via column, name, origin asset, origin column) of one asset."""
    cur = await conn.execute(
        "SELECT DISTINCT c.via_column, c.classification, c.origin_asset_id, c.origin_column, c.asset_id,"
        " a.qualified_name, c.column_name FROM classifications c"
        " JOIN assets a ON a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id"
        " WHERE c.tenant_id = %s AND c.via_asset_id = %s AND c.source = 'propagated'"
        " AND (coalesce(c.via_column, ''), c.classification, c.origin_asset_id, coalesce(c.origin_column, '')) IN ("
        "  SELECT coalesce(k.via, ''), k.name, k.origin, coalesce(k.origin_column, '')"
        "  FROM jsonb_to_recordset(%s::jsonb) AS k(via text, name text, origin uuid, origin_column text))",
        [
            tenant_id,
            via_asset_id,
            Jsonb([{"via": v, "name": n, "origin": o, "origin_column": oc} for v, n, o, oc in keys]),
        ],
    )
    out: dict[tuple[str | None, str, UUID, str | None], list[Carried]] = {k: [] for k in keys}
    for r in await cur.fetchall():
        key = (r["via_column"], r["classification"], r["origin_asset_id"], r["origin_column"])
        out.setdefault(key, []).append(Carried(r["asset_id"], r["qualified_name"], r["column_name"]))
    return out


async def unsupported(conn: Conn, tenant_id: str, asset_ids: Sequence[UUID]) -> list[tuple[str, Row]]:
    """Propagated rows at or from these assets whose lineage step is gone (the edge, or the column
    mapping, was removed): (the qualified name of the row's asset, the row)."""
    cur = await conn.execute(
        f"SELECT a.qualified_name, {', '.join('c.' + c.strip() for c in _COLS.split(','))}"
        " FROM classifications c JOIN assets a ON a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id"
        " WHERE c.tenant_id = %s AND c.source = 'propagated' AND (c.asset_id = ANY(%s) OR c.via_asset_id = ANY(%s))"
        " AND NOT EXISTS (SELECT 1 FROM lineage_edges e"
        "  WHERE e.tenant_id = c.tenant_id AND e.upstream_id = c.via_asset_id AND e.downstream_id = c.asset_id"
        "  AND (c.column_name IS NULL OR EXISTS (SELECT 1 FROM column_lineage cl"
        "   WHERE cl.tenant_id = e.tenant_id AND cl.edge_id = e.edge_id"
        "   AND cl.downstream_column = c.column_name AND cl.upstream_column = c.via_column)))",
        [tenant_id, list(asset_ids), list(asset_ids)],
    )
    return [(r["qualified_name"], _row(r)) for r in await cur.fetchall()]


async def through_processes(
    conn: Conn, tenant_id: str, process_ids: Sequence[UUID], roots: Sequence[str] | None
) -> list[tuple[str, Row, list[dict[str, Any] | None]]]:
    """Propagated rows whose last step runs along an edge through one of these processes (jobs), with a
    name under one of ``roots`` (None: any name): (the qualified name of the row's asset, the row, the
    attributes of the process of every edge that carries that step now, None for an edge without one).
    What a job that blocks more than before may have let through (the caller decides with the blocking
    patterns: a step another edge still carries stays)."""
    carries = (
        "{e}.tenant_id = c.tenant_id AND {e}.upstream_id = c.via_asset_id AND {e}.downstream_id = c.asset_id"
        " AND (c.column_name IS NULL OR EXISTS (SELECT 1 FROM column_lineage cl"
        "  WHERE cl.tenant_id = {e}.tenant_id AND cl.edge_id = {e}.edge_id"
        "  AND cl.downstream_column = c.column_name AND cl.upstream_column = c.via_column))"
    )
    names = None if roots is None else list(roots)
    cur = await conn.execute(
        f"SELECT DISTINCT ON (c.classification_id) a.qualified_name,"
        f" {', '.join('c.' + c.strip() for c in _COLS.split(','))},"
        " (SELECT jsonb_agg(p.attributes) FROM lineage_edges o"
        "  LEFT JOIN assets p ON p.tenant_id = o.tenant_id AND p.asset_id = o.process_id"
        f"  WHERE {carries.format(e='o')}) AS carriers"
        " FROM lineage_edges e"
        " JOIN classifications c ON c.tenant_id = e.tenant_id AND c.asset_id = e.downstream_id"
        "  AND c.via_asset_id = e.upstream_id AND c.source = 'propagated'"
        " JOIN assets a ON a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id"
        f" WHERE e.tenant_id = %s AND e.process_id = ANY(%s) AND {carries.format(e='e')}"
        " AND (%s::text[] IS NULL"
        "  OR EXISTS (SELECT 1 FROM unnest(%s::text[]) r WHERE starts_with(c.classification || '.', r || '.')))"
        " ORDER BY c.classification_id",
        [tenant_id, list(process_ids), names, names],
    )
    return [(r["qualified_name"], _row(r), list(r["carriers"] or [])) for r in await cur.fetchall()]


async def process_upstreams(conn: Conn, tenant_id: str, process_ids: Sequence[UUID]) -> dict[UUID, list[UUID]]:
    """Per process (job), the upstream assets of the edges that run through it."""
    cur = await conn.execute(
        "SELECT process_id, array_agg(DISTINCT upstream_id) AS upstreams FROM lineage_edges"
        " WHERE tenant_id = %s AND process_id = ANY(%s) GROUP BY process_id",
        [tenant_id, list(process_ids)],
    )
    return {r["process_id"]: list(r["upstreams"]) for r in await cur.fetchall()}


async def propagating(conn: Conn, tenant_id: str, asset_ids: Sequence[UUID]) -> list[Row]:
    """The rows of these assets that flow downstream: set with ``propagate``, or propagated themselves."""
    cur = await conn.execute(
        f"SELECT {_COLS} FROM classifications WHERE tenant_id = %s AND asset_id = ANY(%s)"
        " AND (propagate OR source = 'propagated')",
        [tenant_id, list(asset_ids)],
    )
    return [_row(r) for r in await cur.fetchall()]


# -- reads for the API -------------------------------------------------------------------------------


async def inventory(
    conn: Conn, tenant_id: str, name: str | None, after: tuple[str, str, str] | None, limit: int
) -> list[dict[str, Any]]:
    """Every classified place of live assets (one row per place and name, with all its sources), ordered
    by (asset_id, column, name); ``name`` matches itself and its children."""
    where = ["c.tenant_id = %s"]
    args: list[Any] = [tenant_id]
    if name is not None:
        where.append("(c.classification = %s OR c.classification LIKE %s)")
        args += [name, name.replace("_", "\\_") + ".%"]
    if after is not None:
        where.append("(c.asset_id, coalesce(c.column_name, ''), c.classification) > (%s::uuid, %s, %s)")
        args += list(after)
    args += [limit]
    cur = await conn.execute(
        "SELECT c.asset_id, a.qualified_name, a.type, c.column_name AS column, c.classification,"
        " array_agg(DISTINCT c.source ORDER BY c.source) AS sources"
        " FROM classifications c JOIN assets a ON a.tenant_id = c.tenant_id AND a.asset_id = c.asset_id"
        f" AND a.deleted_at IS NULL WHERE {' AND '.join(where)}"
        " GROUP BY c.asset_id, a.qualified_name, a.type, c.column_name, c.classification"
        " ORDER BY c.asset_id, coalesce(c.column_name, ''), c.classification LIMIT %s",
        args,
    )
    return list(await cur.fetchall())


async def taxonomy(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT name, description, created_by, created_at FROM classification_taxonomy WHERE tenant_id = %s"
        " ORDER BY name",
        [tenant_id],
    )
    return list(await cur.fetchall())


async def taxonomy_known(conn: Conn, tenant_id: str, names: Sequence[str]) -> set[str]:
    """Which of ``names`` the tenant has added to its taxonomy."""
    cur = await conn.execute(
        "SELECT name FROM classification_taxonomy WHERE tenant_id = %s AND name = ANY(%s)",
        [tenant_id, list(names)],
    )
    return {r["name"] for r in await cur.fetchall()}


async def taxonomy_add(
    conn: Conn, tenant_id: str, name: str, description: str | None, by: str
) -> dict[str, Any] | None:
    """Add a name; None when the tenant has it already."""
    cur = await conn.execute(
        "INSERT INTO classification_taxonomy (tenant_id, name, description, created_by) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING name, description, created_by, created_at",
        [tenant_id, name, description, by],
    )
    return await cur.fetchone()


async def taxonomy_size(conn: Conn, tenant_id: str) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM classification_taxonomy WHERE tenant_id = %s", [tenant_id])
    row = await cur.fetchone()
    return int(row["n"]) if row else 0
