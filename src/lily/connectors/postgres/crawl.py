"""One crawl of a PostgreSQL database, from its catalog, in four queries (one read-only transaction).

Names follow the OpenLineage dataset naming spec: namespace ``postgres://{host}:{port}``, name
``{database}.{schema}.{table}`` (a schema alone: ``{database}.{schema}``), joined by ``/`` as the
OpenLineage intake joins them, so a crawl and an OpenLineage event of one table meet on one asset.

The session runs with an empty ``search_path``, so ``pg_get_viewdef`` qualifies every name in a view's
definition and its lineage resolves without guessing the schema.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from lily.domain import connectors as rules
from lily.domain.sql_lineage import Relation, SqlLineageError, extract, lineage_payload, qualified_name
from lily.plugins.protocols import ConnectorRunContext, Observed, RunResult

if TYPE_CHECKING:
    from lily.connectors.postgres.plugin import PostgresConfig

KINDS = {"r": "table", "p": "table", "v": "view", "m": "materialized_view", "f": "foreign_table"}
MAX_DEFINITION_CHARS = 100_000

_SCHEMAS = """
SELECT n.nspname AS schema, obj_description(n.oid, 'pg_namespace') AS comment
FROM pg_namespace n
WHERE n.nspname NOT IN ('information_schema') AND n.nspname !~ '^pg_'
ORDER BY 1
"""
RELATIONS = """
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind AS kind,
       d.description AS comment, c.reltuples AS row_estimate,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS definition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND n.nspname = ANY(%s)
ORDER BY 2, 3
"""
COLUMNS = """
SELECT a.attrelid AS oid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable, pg_get_expr(d.adbin, d.adrelid) AS default,
       x.description AS comment, a.attnum AS position
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
-- A join, not col_description(): that is an SQL function run once per column (200k calls on a big source).
LEFT JOIN pg_description x ON x.objoid = a.attrelid AND x.classoid = 'pg_class'::regclass AND x.objsubid = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition
  AND n.nspname = ANY(%s)
ORDER BY a.attrelid, a.attnum
"""
CONSTRAINTS = """
SELECT k.conrelid AS oid, k.conname AS name, k.contype AS kind,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i) AS columns,
       rn.nspname AS ref_schema, rc.relname AS ref_table,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, i)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i) AS ref_columns
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_class rc ON rc.oid = k.confrelid LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE k.contype IN ('p', 'f', 'u') AND n.nspname = ANY(%s)
ORDER BY k.conrelid, k.conname
"""


def rounded_estimate(value: float | None) -> int | None:
    """A row estimate to two significant digits: statistics drift on every ANALYZE, and an exact figure
    would make a new version of every busy table on every crawl."""
    if value is None or value < 0:
        return None
    if value < 100:
        return round(value)
    digits = math.floor(math.log10(value)) - 1
    return int(round(value, -digits))


def wanted(name: str, include: list[str], exclude: list[str]) -> bool:
    if include and not rules.excluded(name.split(".", 1)[0], include):
        return False
    schema = name.split(".", 1)[0]
    return not (rules.excluded(name, exclude) or rules.excluded(schema, exclude))


async def crawl(ctx: ConnectorRunContext, config: PostgresConfig) -> RunResult:
    target = config.target()
    host, port, database = str(target["host"]).lower(), int(target["port"]), str(target["database"])
    addresses = ctx.check_target(host, port, database)
    namespace = f"postgres://{host}:{port}"
    params = {k: v for k, v in target.items() if v is not None and k != "database"}
    # Connect to the address the guard checked; the name still serves TLS verification.
    params["dbname"], params["hostaddr"] = database, addresses[0]
    conn = await psycopg.AsyncConnection.connect(
        **params,
        connect_timeout=config.connect_timeout_seconds,
        application_name="lily-crawler",
        autocommit=True,
        row_factory=dict_row,
    )
    async with conn:
        await conn.execute(
            "SET search_path = ''; SET default_transaction_read_only = on;"
            f" SET statement_timeout = {int(config.statement_timeout_seconds) * 1000}"
        )
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            schemas = [
                r
                for r in await (await conn.execute(_SCHEMAS)).fetchall()
                if wanted(r["schema"], config.include_schemas, config.exclude)
            ]
            names = [r["schema"] for r in schemas]
            relations = await (await conn.execute(RELATIONS, [names])).fetchall()
            columns = await (await conn.execute(COLUMNS, [names])).fetchall()
            constraints = await (await conn.execute(CONSTRAINTS, [names])).fetchall()
    return build(namespace, database, schemas, relations, columns, constraints, config, ctx.source)


def build(
    namespace: str,
    database: str,
    schemas: list[dict[str, Any]],
    relations: list[dict[str, Any]],
    columns: list[dict[str, Any]],
    constraints: list[dict[str, Any]],
    config: PostgresConfig,
    source: str,
) -> RunResult:
    """The crawl's objects from the catalog rows (pure, so the benchmark can time it apart)."""
    result = RunResult(objects=[])
    assert result.objects is not None
    for s in schemas:
        qn = qualified_name(namespace, Relation(database, s["schema"], ""))
        asset: dict[str, Any] = {
            "type": "schema",
            "name": s["schema"],
            "attributes": {"postgres": {"database": database, "schema": s["schema"]}},
        }
        if s["comment"]:
            asset["description"] = s["comment"]
        result.objects.append(Observed(qn, asset))
    kept = [r for r in relations if wanted(f"{r['schema']}.{r['name']}", config.include_schemas, config.exclude)]
    by_oid: dict[int, list[dict[str, Any]]] = {}
    for c in columns:
        by_oid.setdefault(c["oid"], []).append(c)
    keys: dict[int, list[dict[str, Any]]] = {}
    for k in constraints:
        keys.setdefault(k["oid"], []).append(k)
    # Every crawled relation's columns: the schema view lineage resolves ``*`` and bare names with.
    known = {
        (database, r["schema"], r["name"]): {c["name"]: c["type"] for c in by_oid.get(r["oid"], [])} for r in relations
    }
    for r in kept:
        relation = Relation(database, r["schema"], r["name"])
        qn = qualified_name(namespace, relation)
        cons = keys.get(r["oid"], [])
        primary: list[str] = next((k["columns"] for k in cons if k["kind"] == "p"), [])
        cols = [
            {
                "name": c["name"],
                "type": c["type"],
                "description": c["comment"],
                "nullable": c["nullable"],
                "default": c["default"],
                "position": c["position"],
                "primary_key": c["name"] in primary,
            }
            for c in by_oid.get(r["oid"], [])
        ]
        details: dict[str, Any] = {
            "database": database,
            "schema": r["schema"],
            "table": r["name"],
            "kind": KINDS[r["kind"]],
            "row_estimate": rounded_estimate(r["row_estimate"]) if r["kind"] in ("r", "p", "m") else None,
            "primary_key": primary,
            "unique": [{"name": k["name"], "columns": k["columns"]} for k in cons if k["kind"] == "u"],
            "foreign_keys": [
                {
                    "name": k["name"],
                    "columns": k["columns"],
                    "references": qualified_name(namespace, Relation(database, k["ref_schema"], k["ref_table"])),
                    "referenced_columns": k["ref_columns"],
                }
                for k in cons
                if k["kind"] == "f"
            ],
        }
        lineage = None
        definition = r["definition"]
        if definition is not None:
            details["definition"] = definition[:MAX_DEFINITION_CHARS]
            lineage, note = view_lineage(definition, relation, known, namespace, source)
            if note:
                result.errors.append(f"{qn}: {note}")
        asset = {
            "type": KINDS[r["kind"]],
            "name": r["name"],
            "attributes": {"columns": cols, "postgres": details},
        }
        if r["comment"]:
            asset["description"] = r["comment"]
        result.objects.append(Observed(qn, asset, lineage))
    result.detail = {"namespace": namespace, "schemas": len(schemas), "relations": len(kept)}
    return result


def view_lineage(
    definition: str,
    relation: Relation,
    known: dict[tuple[str, str, str], dict[str, str]],
    namespace: str,
    source: str,
) -> tuple[dict[str, Any] | None, str | None]:
    """The ``lineage.upsert`` payload of a view from its definition, and a note when only part resolved."""
    try:
        found = extract(
            definition,
            dialect="postgres",
            database=relation.database,
            schema=relation.schema,
            columns=known,
            target=relation,
        )
    except SqlLineageError as exc:
        return None, f"view definition not parsed: {exc}"
    if not found:
        return None, None
    return lineage_payload(found[0], namespace, source=source), found[0].note
