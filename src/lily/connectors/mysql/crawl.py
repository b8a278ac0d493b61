"""One crawl of a MySQL or MariaDB server through ``information_schema`` (pymysql, in a thread).

Names follow the OpenLineage dataset naming spec: namespace ``mysql://{host}:{port}``, name
``{database}.{table}`` (a database alone: ``{database}``), joined by ``/`` as the OpenLineage intake
joins them.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pymysql
import pymysql.cursors

from lily.connectors.postgres.crawl import rounded_estimate
from lily.domain import connectors as rules
from lily.domain.sql_lineage import Relation, SqlLineageError, extract, lineage_payload, qualified_name
from lily.plugins.protocols import ConnectorRunContext, Observed, RunResult

if TYPE_CHECKING:
    from lily.connectors.mysql.plugin import MySQLConfig

MAX_DEFINITION_CHARS = 100_000

_DATABASES = "SELECT schema_name AS db FROM information_schema.schemata ORDER BY 1"
_TABLES = """
SELECT table_schema AS db, table_name AS name, table_type AS kind, table_comment AS comment, table_rows AS row_estimate
FROM information_schema.tables WHERE table_schema IN %s ORDER BY 1, 2
"""
_COLUMNS = """
SELECT table_schema AS db, table_name AS tbl, column_name AS name, column_type AS type, is_nullable AS nullable,
       column_default AS dflt, column_comment AS comment, ordinal_position AS position
FROM information_schema.columns WHERE table_schema IN %s ORDER BY 1, 2, ordinal_position
"""
_KEYS = """
SELECT k.table_schema AS db, k.table_name AS tbl, k.constraint_name AS name, t.constraint_type AS kind,
       k.column_name AS col, k.referenced_table_schema AS ref_db, k.referenced_table_name AS ref_table,
       k.referenced_column_name AS ref_col
FROM information_schema.key_column_usage k
JOIN information_schema.table_constraints t
  ON t.constraint_schema = k.constraint_schema AND t.constraint_name = k.constraint_name
 AND t.table_schema = k.table_schema AND t.table_name = k.table_name
WHERE k.table_schema IN %s AND t.constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY', 'UNIQUE')
ORDER BY 1, 2, 3, k.ordinal_position
"""
_VIEWS = "SELECT table_schema AS db, table_name AS name, view_definition AS def FROM information_schema.views"
_VIEWS += " WHERE table_schema IN %s"

KINDS = {"BASE TABLE": "table", "VIEW": "view", "SYSTEM VERSIONED": "table", "SEQUENCE": "sequence"}


def _read(config: MySQLConfig, address: str) -> dict[str, list[dict[str, Any]]]:
    target = config.target()
    conn = pymysql.connect(
        host=address,  # the address the guard checked, not the name again
        port=int(target["port"]),
        user=target["user"],
        password=target["password"] or "",
        connect_timeout=config.connect_timeout_seconds,
        read_timeout=config.read_timeout_seconds,
        cursorclass=pymysql.cursors.DictCursor,
        charset="utf8mb4",
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION TRANSACTION READ ONLY")
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            cur.execute(_DATABASES)
            wanted = config.databases()
            dbs = [
                r
                for r in cur.fetchall()
                if r["db"] not in ("information_schema", "mysql", "performance_schema", "sys")
                and (not wanted or rules.excluded(r["db"], wanted))
                and not rules.excluded(r["db"], config.exclude)
            ]
            names = tuple(r["db"] for r in dbs)
            out: dict[str, list[dict[str, Any]]] = {"databases": dbs}
            for key, query in (("tables", _TABLES), ("columns", _COLUMNS), ("keys", _KEYS), ("views", _VIEWS)):
                if names:
                    cur.execute(query, [names])
                    out[key] = list(cur.fetchall())
                else:
                    out[key] = []
            cur.execute("COMMIT")
        return out
    finally:
        conn.close()


async def crawl(ctx: ConnectorRunContext, config: MySQLConfig) -> RunResult:
    target = config.target()
    host, port = str(target["host"]).lower(), int(target["port"])
    addresses = ctx.check_target(host, port, None)
    rows = await asyncio.to_thread(_read, config, addresses[0])
    return build(f"mysql://{host}:{port}", rows, config, ctx.source)


def build(namespace: str, rows: dict[str, list[dict[str, Any]]], config: MySQLConfig, source: str) -> RunResult:
    result = RunResult(objects=[])
    assert result.objects is not None
    for d in rows["databases"]:
        qn = qualified_name(namespace, Relation(d["db"], "", ""))
        result.objects.append(
            Observed(qn, {"type": "database", "name": d["db"], "attributes": {"mysql": {"database": d["db"]}}})
        )
    columns: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in rows["columns"]:
        columns.setdefault((c["db"], c["tbl"]), []).append(c)
    keys: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for k in rows["keys"]:
        named = keys.setdefault((k["db"], k["tbl"]), {})
        entry = named.setdefault(
            k["name"], {"kind": k["kind"], "columns": [], "ref_db": k["ref_db"], "ref_table": k["ref_table"], "ref": []}
        )
        entry["columns"].append(k["col"])
        if k["ref_col"]:
            entry["ref"].append(k["ref_col"])
    views = {(v["db"], v["name"]): v["def"] for v in rows["views"]}
    known = {(db, "", tbl): {c["name"]: c["type"] for c in cols} for (db, tbl), cols in columns.items()}
    for t in rows["tables"]:
        name = f"{t['db']}.{t['name']}"
        if rules.excluded(name, config.exclude):
            continue
        kind = KINDS.get(t["kind"], "table")
        relation = Relation(t["db"], "", t["name"])
        qn = qualified_name(namespace, relation)
        cons = keys.get((t["db"], t["name"]), {})
        primary: list[str] = next((k["columns"] for k in cons.values() if k["kind"] == "PRIMARY KEY"), [])
        cols = [
            {
                "name": c["name"],
                "type": c["type"],
                "description": c["comment"] or None,
                "nullable": c["nullable"] == "YES",
                "default": c["dflt"],
                "position": int(c["position"]),
                "primary_key": c["name"] in primary,
            }
            for c in columns.get((t["db"], t["name"]), [])
        ]
        details: dict[str, Any] = {
            "database": t["db"],
            "table": t["name"],
            "kind": kind,
            "row_estimate": rounded_estimate(t["row_estimate"]) if kind == "table" and t["row_estimate"] else None,
            "primary_key": primary,
            "unique": [{"name": n, "columns": k["columns"]} for n, k in cons.items() if k["kind"] == "UNIQUE"],
            "foreign_keys": [
                {
                    "name": n,
                    "columns": k["columns"],
                    "references": qualified_name(namespace, Relation(k["ref_db"], "", k["ref_table"])),
                    "referenced_columns": k["ref"],
                }
                for n, k in cons.items()
                if k["kind"] == "FOREIGN KEY"
            ],
        }
        lineage = None
        definition = views.get((t["db"], t["name"]))
        if kind == "view" and definition:
            details["definition"] = definition[:MAX_DEFINITION_CHARS]
            try:
                found = extract(definition, dialect="mysql", database=t["db"], columns=known, target=relation)
            except SqlLineageError as exc:
                result.errors.append(f"{qn}: view definition not parsed: {exc}")
                found = []
            if found:
                lineage = lineage_payload(found[0], namespace, source=source)
                if found[0].note:
                    result.errors.append(f"{qn}: {found[0].note}")
        asset: dict[str, Any] = {"type": kind, "name": t["name"], "attributes": {"columns": cols, "mysql": details}}
        if t["comment"] and kind != "view":
            asset["description"] = t["comment"]
        result.objects.append(Observed(qn, asset, lineage))
    result.detail = {"namespace": namespace, "databases": len(rows["databases"]), "relations": len(rows["tables"])}
    return result
