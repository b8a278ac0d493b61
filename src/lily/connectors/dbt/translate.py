"""dbt artifacts → the assets and lineage they describe. Pure: no I/O, same artifacts, same output.

- models, seeds and snapshots (not ephemeral models) and sources become assets named like the warehouse
  relation they are, the OpenLineage way (``postgres://host:5432/db.schema.table``), so a crawl of the
  warehouse, an OpenLineage event of the relation and dbt all land on one asset;
- description, tags and ``meta.owner`` (a name or a list) become the asset's; columns come from
  ``catalog.json`` (type, position, comment) merged with the manifest's documented columns;
- ``depends_on`` becomes table lineage (through ephemeral models to what they read), and each model's
  compiled SQL, parsed by sqlglot, its column lineage;
- test results of ``run_results.json`` are kept on the tested asset under ``attributes.dbt_tests``:
  one entry per test with its name, node, column, status, failures and message — the shape a
  data-quality view reads. Timings are left out, so a rerun with the same outcomes writes no version.

Fields dbt leaves empty are not sent: an upsert only changes what it carries, so dbt never erases a
description or owner that a crawl or a person wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lily.domain.lineage import MAX_REFS
from lily.domain.sql_lineage import Columns, SqlLineageError, extract
from lily.domain.sql_lineage import Relation as SqlRelation

RELATIONS = ("model", "seed", "snapshot")
# The asset types the postgres crawler gives the same relations, so the two agree.
TABLE, VIEW, MATERIALIZED_VIEW = "table", "view", "materialized_view"
# dbt adapter type → sqlglot dialect of its compiled SQL.
DIALECTS = {
    "postgres": "postgres",
    "redshift": "redshift",
    "snowflake": "snowflake",
    "bigquery": "bigquery",
    "duckdb": "duckdb",
    "spark": "spark",
    "databricks": "databricks",
    "trino": "trino",
}
MAX_TEXT = 65536
MAX_LABEL = 256
MAX_LABELS = 256
MAX_TESTS_PER_ASSET = 500
MAX_MESSAGE = 1000


@dataclass(slots=True)
class Translated:
    """One relation as the run writes it: its ``asset.upsert`` payload and, for a model with inputs,
    the ``lineage.upsert`` payload that has it as its downstream (same shape as the crawler's
    ``Observed``)."""

    qualified_name: str
    asset: dict[str, Any]
    lineage: dict[str, Any] | None = None


@dataclass(slots=True)
class Translation:
    objects: list[Translated] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # per-node issues of a run that still succeeds


@dataclass(frozen=True, slots=True)
class Relation:
    unique_id: str
    database: str
    schema: str
    identifier: str
    asset_type: str

    def qualified_name(self, namespace: str) -> str:
        return f"{namespace}/{self.database}.{self.schema}.{self.identifier}"


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value[:limit] or None


def _labels(values: Any) -> list[str]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list):
        return []
    out = [v for v in (_text(x, MAX_LABEL) for x in values) if v]
    return list(dict.fromkeys(out))[:MAX_LABELS]


def _relation(node: Mapping[str, Any]) -> Relation | None:
    kind = node.get("resource_type")
    config = node.get("config") or {}
    if kind == "source":
        identifier = node.get("identifier") or node.get("name")
        asset_type = TABLE
    elif kind in RELATIONS:
        materialized = config.get("materialized")
        if materialized == "ephemeral":
            return None
        identifier = node.get("alias") or node.get("name")
        asset_type = {"view": VIEW, "materialized_view": MATERIALIZED_VIEW}.get(str(materialized), TABLE)
    else:
        return None
    database, schema = node.get("database"), node.get("schema")
    if not (isinstance(database, str) and isinstance(schema, str) and isinstance(identifier, str)):
        return None
    return Relation(str(node["unique_id"]), database, schema, identifier, asset_type)


def _owners(node: Mapping[str, Any]) -> list[str]:
    meta = node.get("meta") or (node.get("config") or {}).get("meta") or {}
    return _labels(meta.get("owner")) if isinstance(meta, dict) else []


def _columns(node: Mapping[str, Any], catalogued: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    documented: Mapping[str, Any] = node.get("columns") or {}
    out: dict[str, dict[str, Any]] = {}
    if catalogued:
        ordered = sorted(catalogued.get("columns", {}).values(), key=lambda c: (c.get("index") or 0, c.get("name")))
        for col in ordered:
            name = col.get("name")
            if isinstance(name, str) and name:
                out[name] = {
                    "name": name,
                    "type": _text(col.get("type"), 512),
                    "description": _text(col.get("comment")),
                }
                out[name]["position"] = col.get("index")
    for name, col in documented.items():
        entry = out.get(name) or next((c for n, c in out.items() if n.lower() == name.lower()), None)
        if entry is None:
            entry = out[name] = {"name": name, "type": _text(col.get("data_type"), 512), "description": None}
        described = _text(col.get("description"))
        if described:
            entry["description"] = described
        tags = _labels(col.get("tags"))
        if tags:
            entry["tags"] = tags
    return list(out.values())


def _tests(manifest: Mapping[str, Any], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The test results of this run, by the unique id of the node each test is attached to."""
    out: dict[str, list[dict[str, Any]]] = {}
    for uid, node in (manifest.get("nodes") or {}).items():
        if node.get("resource_type") != "test" or uid not in results:
            continue
        attached = node.get("attached_node") or next(iter((node.get("depends_on") or {}).get("nodes") or []), None)
        if not attached:
            continue
        result = results[uid]
        metadata = node.get("test_metadata") or {}
        failures = result.get("failures")
        out.setdefault(attached, []).append(
            {
                "test": _text(metadata.get("name"), MAX_LABEL) or _text(node.get("name"), MAX_LABEL),
                "name": _text(node.get("name"), MAX_LABEL),
                "unique_id": uid,
                "node": attached,
                "column": _text(node.get("column_name"), MAX_LABEL),
                "status": _text(result.get("status"), 64),
                "failures": failures if isinstance(failures, int) else None,
                "message": _text(result.get("message"), MAX_MESSAGE),
                "severity": _text((node.get("config") or {}).get("severity"), 16),
            }
        )
    return {k: sorted(v, key=lambda t: t["unique_id"])[:MAX_TESTS_PER_ASSET] for k, v in out.items()}


def translate(
    manifest: Mapping[str, Any],
    catalog: Mapping[str, Any] | None,
    run_results: Mapping[str, Any] | None,
    namespace: str,
) -> Translation:
    """What ``manifest`` (and optionally ``catalog`` and ``run_results``) say, as Lily writes it."""
    out = Translation()
    nodes: dict[str, Mapping[str, Any]] = {**(manifest.get("nodes") or {}), **(manifest.get("sources") or {})}
    adapter = str((manifest.get("metadata") or {}).get("adapter_type") or "postgres")
    dialect = DIALECTS.get(adapter, "postgres")
    relations = {uid: rel for uid, node in nodes.items() if (rel := _relation(node)) is not None}
    catalogued: dict[str, Mapping[str, Any]] = {}
    if catalog:
        catalogued = {**(catalog.get("nodes") or {}), **(catalog.get("sources") or {})}
    results = {
        r["unique_id"]: r for r in (run_results or {}).get("results") or [] if isinstance(r, dict) and "unique_id" in r
    }
    tests = _tests(manifest, results)
    columns = {uid: _columns(nodes[uid], catalogued.get(uid)) for uid in relations}
    schema: Columns = {
        (r.database, r.schema, r.identifier): {c["name"]: c.get("type") or "text" for c in columns[uid]}
        for uid, r in relations.items()
        if columns[uid]
    }

    for uid, rel in sorted(relations.items()):
        node = nodes[uid]
        qn = rel.qualified_name(namespace)
        config = node.get("config") or {}
        asset: dict[str, Any] = {"qualified_name": qn, "type": rel.asset_type, "name": rel.identifier[:512]}
        description = _text(node.get("description")) or (
            _text(node.get("source_description")) if node.get("resource_type") == "source" else None
        )
        if description:
            asset["description"] = description
        owners = _owners(node)
        if owners:
            asset["owners"] = owners
        tags = _labels([*(node.get("tags") or []), *(config.get("tags") or [])])
        if tags:
            asset["tags"] = tags
        attributes: dict[str, Any] = {
            "dbt": {
                "unique_id": uid,
                "resource_type": node.get("resource_type"),
                "package": node.get("package_name"),
                "path": node.get("original_file_path"),
                "materialized": config.get("materialized") if node.get("resource_type") != "source" else None,
            }
        }
        if columns[uid]:
            attributes["columns"] = columns[uid]
        if uid in tests:
            attributes["dbt_tests"] = tests[uid]
        asset["attributes"] = attributes
        lineage, problem = _lineage(uid, node, rel, nodes, relations, columns[uid], schema, namespace, dialect)
        if problem:
            out.problems.append(problem)
        out.objects.append(Translated(qn, asset, lineage))
    return out


def _inputs(uid: str, nodes: Mapping[str, Mapping[str, Any]], relations: Mapping[str, Relation]) -> list[Relation]:
    """The relations ``uid`` reads, looking through ephemeral models (inlined, so their inputs count)."""
    found: dict[str, Relation] = {}
    seen = {uid}
    todo = list((nodes[uid].get("depends_on") or {}).get("nodes") or [])
    while todo:
        up = todo.pop(0)
        if up in seen or up not in nodes:
            continue
        seen.add(up)
        if up in relations:
            found[up] = relations[up]
        elif (nodes[up].get("config") or {}).get("materialized") == "ephemeral":
            todo.extend((nodes[up].get("depends_on") or {}).get("nodes") or [])
    return list(found.values())


def _lineage(
    uid: str,
    node: Mapping[str, Any],
    rel: Relation,
    nodes: Mapping[str, Mapping[str, Any]],
    relations: Mapping[str, Relation],
    columns: list[dict[str, Any]],
    schema: Columns,
    namespace: str,
    dialect: str,
) -> tuple[dict[str, Any] | None, str | None]:
    if node.get("resource_type") not in ("model", "snapshot"):
        return None, None
    qn = rel.qualified_name(namespace)
    inputs = [r for r in _inputs(uid, nodes, relations) if r.qualified_name(namespace) != qn]
    if not inputs:
        return None, None
    if len(inputs) > MAX_REFS:
        return None, f"{uid}: {len(inputs)} inputs, more than the {MAX_REFS} one lineage write takes"
    ups = [r.qualified_name(namespace) for r in inputs]
    names = {(r.database, r.schema, r.identifier): r.qualified_name(namespace) for r in inputs}
    mappings: list[dict[str, Any]] = []
    problem = None
    sql = node.get("compiled_code") or node.get("compiled_sql")
    if isinstance(sql, str) and sql.strip() and columns:
        target = SqlRelation(rel.database, rel.schema, rel.identifier)
        try:
            found = extract(
                sql, dialect=dialect, database=rel.database, schema=rel.schema, columns=schema, target=target
            )
        except SqlLineageError as exc:
            found, problem = [], f"{uid}: compiled SQL not parsed, no column lineage ({exc})"
        traced = found[0].columns if found else {}
        if found and found[0].note:
            problem = f"{uid}: {found[0].note}"
        for column, sources in sorted(traced.items()):
            upstreams = [
                {"asset": names[key], "column": col}
                for src, col in sources
                if (key := (src.database, src.schema, src.table)) in names
            ][:MAX_REFS]
            if upstreams:
                mappings.append({"downstream": qn, "column": column, "upstreams": upstreams, "transformation": None})
    types = {r.qualified_name(namespace): r.asset_type for r in inputs}
    types[qn] = rel.asset_type
    return {
        "upstreams": ups,
        "downstreams": [qn],
        "process": None,
        "column_mappings": mappings,
        "types": types,
    }, problem
