"""Table and column lineage of SQL statements, with sqlglot (a real parser, not a hand-written one).

Statements that write a relation from a query carry lineage: ``CREATE VIEW / MATERIALIZED VIEW /
TABLE … AS SELECT``, ``INSERT INTO … SELECT``; a bare view definition (a ``SELECT``, as the database
catalog stores it) is read with the relation it defines given by the caller. Column lineage follows each
output column back to the table columns it is computed from; it needs to know the tables' columns for
``*`` and unqualified names (``schema``) and is left out for a column sqlglot cannot follow, never
failing the table lineage. Pure: no I/O.

Names come out as :class:`Relation`; the caller turns them into qualified names with
:func:`qualified_name` (the OpenLineage dataset naming: ``postgres://host:port/db.schema.table``,
``mysql://host:port/db.table``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import lineage
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

MAX_SQL_CHARS = 1_000_000
MAX_STATEMENTS = 1000
MAX_OUTPUT_COLUMNS = 2000
DIALECTS = ("postgres", "mysql", "bigquery", "snowflake", "redshift", "duckdb", "spark", "trino", "tsql", "sqlite")

# (database, schema, table) → {column: type}; for two-part dialects (MySQL) the schema is "".
Columns = Mapping[tuple[str, str, str], Mapping[str, str]]


class SqlLineageError(ValueError):
    """SQL that cannot be parsed; the message says where."""


@dataclass(frozen=True, slots=True, order=True)
class Relation:
    database: str
    schema: str  # "" in two-part dialects
    table: str

    def dotted(self) -> str:
        return ".".join(p for p in (self.database, self.schema, self.table) if p)


@dataclass(slots=True)
class StatementLineage:
    """One statement's lineage: the relation written, the relations read, and per written column the
    columns it reads (only those that resolved)."""

    target: Relation | None
    sources: list[Relation] = field(default_factory=list)
    columns: dict[str, list[tuple[Relation, str]]] = field(default_factory=dict)
    note: str | None = None  # why column lineage is missing or partial


def two_part(dialect: str) -> bool:
    return dialect in ("mysql", "sqlite")


def qualified_name(namespace: str, relation: Relation) -> str:
    """The OpenLineage dataset name of ``relation`` in ``namespace``, as Lily's qualified name."""
    return f"{namespace.rstrip('/')}/{relation.dotted()}"


def _relation(table: exp.Table, dialect: str, database: str, schema: str) -> Relation:
    if two_part(dialect):
        # MySQL's "db.table" parses as schema-qualified: the database sits in sqlglot's ``db``.
        return Relation(table.db or database, "", table.name)
    return Relation(table.catalog or database, table.db or schema, table.name)


def _nested(columns: Columns, dialect: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for (db, sch, table), cols in columns.items():
        typed = {c: (t or "text") for c, t in cols.items()}
        if two_part(dialect):
            out.setdefault(db, {})[table] = typed
        else:
            out.setdefault(db, {}).setdefault(sch, {})[table] = typed
    return out


def parse(sql: str, dialect: str) -> list[exp.Expr]:
    if len(sql) > MAX_SQL_CHARS:
        raise SqlLineageError(f"{len(sql)} characters; at most {MAX_SQL_CHARS} are parsed")
    try:
        statements = [s for s in sqlglot.parse(sql, dialect=dialect) if s is not None]
    except SqlglotError as exc:
        raise SqlLineageError(str(exc).splitlines()[0][:500]) from None
    if len(statements) > MAX_STATEMENTS:
        raise SqlLineageError(f"{len(statements)} statements; at most {MAX_STATEMENTS}")
    return statements


def extract(
    sql: str,
    *,
    dialect: str = "postgres",
    database: str = "",
    schema: str = "",
    columns: Columns | None = None,
    target: Relation | None = None,
) -> list[StatementLineage]:
    """The lineage of every statement in ``sql`` that writes a relation from a query (statements that
    do not are skipped). ``database`` and ``schema`` name relations written without them; ``target``
    is the relation a bare ``SELECT`` defines (a view's stored definition). Raises
    :class:`SqlLineageError` when the SQL does not parse."""
    out = []
    for statement in parse(sql, dialect):
        found = _statement(statement, dialect, database, schema, columns or {}, target)
        if found is not None:
            out.append(found)
    return out


def _statement(
    statement: exp.Expr, dialect: str, database: str, schema: str, columns: Columns, target: Relation | None
) -> StatementLineage | None:
    query: exp.Expr | None = None
    names: list[str] | None = None  # the written columns, when the statement lists them
    if isinstance(statement, exp.Create) and isinstance(statement.expression, exp.Query):
        table = statement.this.this if isinstance(statement.this, exp.Schema) else statement.this
        if isinstance(statement.this, exp.Schema):
            names = [c.name for c in statement.this.expressions]
        target = _relation(table, dialect, database, schema) if isinstance(table, exp.Table) else None
        query = statement.expression
    elif isinstance(statement, exp.Insert) and isinstance(statement.expression, exp.Query):
        into = statement.this
        if isinstance(into, exp.Schema):
            names = [c.name for c in into.expressions] or None
            into = into.this
        target = _relation(into, dialect, database, schema) if isinstance(into, exp.Table) else None
        query = statement.expression
    elif isinstance(statement, exp.Query) and target is not None:
        query = statement
    if query is None or target is None:
        return None
    outer_with = statement.args.get("with_") if statement is not query else None
    if outer_with is not None and not query.args.get("with_"):
        # ``WITH x AS (…) INSERT INTO t SELECT … FROM x``: the CTEs belong to the query they feed.
        query = query.copy()
        query.set("with_", outer_with.copy())
    return _query_lineage(query, target, names, dialect, database, schema, columns)


def _query_lineage(
    query: exp.Expr,
    target: Relation,
    names: list[str] | None,
    dialect: str,
    database: str,
    schema: str,
    columns: Columns,
) -> StatementLineage:
    ctes = {c.alias_or_name for c in query.find_all(exp.CTE)}
    sources = sorted(
        {
            _relation(t, dialect, database, schema)
            for t in query.find_all(exp.Table)
            if t.name and not (not t.db and t.name in ctes)
        }
        - {target}
    )
    found = StatementLineage(target, sources)
    # Only the tables the query reads: sqlglot normalises the whole schema it is given on every call,
    # and a crawl's schema holds every table of the source.
    wanted = {(r.database, r.schema, r.table) for r in sources}
    nested = _nested({k: v for k, v in columns.items() if k in wanted}, dialect)
    try:
        qualified = qualify(
            query.copy(),
            schema=nested,
            catalog=(database or None) if not two_part(dialect) else None,
            db=(schema or None) if not two_part(dialect) else (database or None),
            dialect=dialect,
            validate_qualify_columns=False,
            identify=False,
        )
    except (SqlglotError, KeyError, ValueError) as exc:
        found.note = f"column lineage not resolved: {str(exc)[:200]}"
        return found
    outputs = qualified.named_selects if isinstance(qualified, exp.Query) else []
    if any(o == "*" for o in outputs):
        found.note = "column lineage needs the columns of the tables read (a * did not expand)"
        return found
    try:
        # One walk for every output column over the scope qualified above (not one qualify per column).
        nodes = lineage(None, qualified, schema=nested, dialect=dialect, scope=build_scope(qualified), copy=False)
    except (SqlglotError, KeyError, ValueError, AttributeError) as exc:
        found.note = f"column lineage not resolved: {str(exc)[:200]}"
        return found
    assert isinstance(nodes, dict)
    for i, output in enumerate(outputs[:MAX_OUTPUT_COLUMNS]):
        written = names[i] if names is not None and i < len(names) else output
        node = nodes.get(output)
        if node is None:
            continue
        ups: dict[tuple[Relation, str], None] = {}
        for leaf in node.walk():
            if leaf.downstream or not isinstance(leaf.expression, exp.Table):
                continue
            relation = _relation(leaf.expression, dialect, database, schema)
            column = leaf.name.rsplit(".", 1)[-1].strip('"`')
            if relation != target and column and column != "*":
                ups[(relation, column)] = None
        if ups:
            found.columns[written] = list(ups)
    return found


def lineage_payload(found: StatementLineage, namespace: str, *, source: str) -> dict[str, object] | None:
    """The ``lineage.upsert`` payload of one statement's lineage (None when it reads nothing)."""
    if found.target is None or not found.sources:
        return None
    down = qualified_name(namespace, found.target)
    ups = [qualified_name(namespace, r) for r in found.sources]
    mappings = []
    for column, refs in sorted(found.columns.items()):
        upstreams = [{"asset": qualified_name(namespace, r), "column": c} for r, c in refs]
        upstreams = [u for u in upstreams if u["asset"] in ups]
        if upstreams:
            mappings.append({"downstream": down, "column": column, "upstreams": upstreams, "transformation": None})
    return {
        "upstreams": ups,
        "downstreams": [down],
        "process": None,
        "column_mappings": mappings,
        "types": {qn: "dataset" for qn in [*ups, down]},
        "source": source,
    }
