"""Read a few tables' catalog entries again after DDL touched them, with the ``postgres`` crawler's own
queries and its own :func:`~lily.connectors.postgres.crawl.build`, so a table reads the same — same
qualified name, same asset document — whether a crawl or CDC saw it. The crawler's queries select by
schema; here they are wrapped to select the touched tables only (PostgreSQL pushes the filter down).

Note for the crawler's owner: the wrapped constants are module-private there; a public
``read(conn, schemas, only=…)`` in :mod:`lily.connectors.postgres.crawl` would let this module drop them.
"""

from __future__ import annotations

from typing import Any

from lily.connectors.postgres import crawl
from lily.connectors.postgres.plugin import PostgresConfig
from lily.domain.sql_lineage import Relation, qualified_name
from lily.plugins.protocols import Observed

Pair = tuple[str, str]


def _strip_order(sql: str) -> str:
    head, _, _ = sql.rpartition("ORDER BY")
    return head


_RELATIONS = (
    f"SELECT * FROM ({_strip_order(crawl.RELATIONS)}) r"
    " WHERE (r.schema, r.name) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
)
_COLUMNS = f"SELECT * FROM ({_strip_order(crawl.COLUMNS)}) c WHERE c.oid = ANY(%s::oid[]) ORDER BY c.oid, c.position"
_CONSTRAINTS = (
    f"SELECT * FROM ({_strip_order(crawl.CONSTRAINTS)}) k WHERE k.oid = ANY(%s::oid[]) ORDER BY k.oid, k.name"
)


def wanted(pair: Pair, config: PostgresConfig) -> bool:
    return crawl.wanted(f"{pair[0]}.{pair[1]}", config.include_schemas, config.exclude)


async def read(
    conn: Any, config: PostgresConfig, namespace: str, database: str, pairs: list[Pair], source: str
) -> tuple[dict[str, Observed], list[str]]:
    """The touched tables that exist now, by qualified name, and per-table notes; a pair that is not
    in the result is gone (dropped, or renamed away)."""
    schemas = sorted({s for s, _ in pairs})
    async with conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        relations = await (
            await conn.execute(_RELATIONS, [schemas, [s for s, _ in pairs], [t for _, t in pairs]])
        ).fetchall()
        oids = [r["oid"] for r in relations]
        columns = await (await conn.execute(_COLUMNS, [schemas, oids])).fetchall() if oids else []
        constraints = await (await conn.execute(_CONSTRAINTS, [schemas, oids])).fetchall() if oids else []
    built = crawl.build(namespace, database, [], relations, columns, constraints, config, source)
    return {o.qualified_name: o for o in built.objects or []}, list(built.errors)


def name_of(namespace: str, database: str, pair: Pair) -> str:
    return qualified_name(namespace, Relation(database, pair[0], pair[1]))
