"""``POST /metadata/lineage/sql``: table and column lineage from SQL statements (sqlglot), applied
through the lineage write path (``lineage.upsert`` events) or, with ``dry_run``, only returned.

The tables a statement reads are looked up in Lily first: their recorded columns let ``*`` and
unqualified column names resolve to column lineage.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from lily.api import access
from lily.api.deps import RequestId, RuntimeDep
from lily.api.errors import problem_responses
from lily.domain import sql_lineage as sl
from lily.domain.errors import Invalid
from lily.domain.events import LINEAGE_UPSERT, NewEvent
from lily.store import assets as store_assets

router = APIRouter(prefix="/metadata/lineage", tags=["lineage"])

MAX_SQL_CHARS = 512 * 1024
Part = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]


class SqlLineageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sql: Annotated[str, StringConstraints(min_length=1, max_length=MAX_SQL_CHARS)] = Field(
        description="One or more statements (CREATE VIEW/TABLE … AS SELECT, INSERT INTO … SELECT)"
    )
    dialect: Literal[sl.DIALECTS] = "postgres"  # type: ignore[valid-type]
    namespace: Annotated[
        str, StringConstraints(min_length=3, max_length=512, pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*://[^\s/]+$")
    ] = Field(description="The OpenLineage namespace of the tables: postgres://host:5432, mysql://host:3306")
    default_database: Part | None = None
    default_schema: Part | None = None
    dry_run: bool = False


class ColumnSource(BaseModel):
    asset: str
    column: str


class StatementOut(BaseModel):
    target: str
    sources: list[str]
    columns: dict[str, list[ColumnSource]]
    note: str | None


class SqlLineageOut(BaseModel):
    statements: list[StatementOut]
    applied: bool = Field(description="False for a dry run (or when no statement carries lineage)")
    event_ids: list[str]


def _extract(body: SqlLineageIn, columns: sl.Columns | None) -> list[sl.StatementLineage]:
    try:
        return sl.extract(
            body.sql,
            dialect=body.dialect,
            database=body.default_database or "",
            schema=body.default_schema or "",
            columns=columns,
        )
    except sl.SqlLineageError as exc:
        raise Invalid(f"the SQL does not parse: {exc}", field="sql") from None


@router.post("/sql", response_model=SqlLineageOut, responses=problem_responses(413))
async def lineage_from_sql(
    body: SqlLineageIn, principal: access.Writer, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Extract lineage from SQL and apply it (editor), or return it with ``dry_run``.

    Access policies apply as to ``POST /metadata/lineage``: the statements' targets must be writable and
    the tables they read readable, or the whole request is refused before anything is appended."""
    found = _extract(body, None)
    read = {r for f in found for r in f.sources}
    if read:
        # What Lily knows of the tables read: their columns resolve ``*`` and bare names.
        names = {sl.qualified_name(body.namespace, r): r for r in read}
        async with runtime.db.tenant(principal.tenant_id) as conn:
            known = await store_assets.current_by_names(conn, principal.tenant_id, list(names))
        columns = {
            (r.database, r.schema, r.table): {
                str(c["name"]): str(c.get("type") or "text")
                for c in known[qn].attributes.get("columns", [])
                if isinstance(c, dict) and isinstance(c.get("name"), str)
            }
            for qn, r in names.items()
            if qn in known and isinstance(known[qn].attributes.get("columns"), list)
        }
        if columns:
            found = _extract(body, columns)
    payloads = [p for f in found if (p := sl.lineage_payload(f, body.namespace, source="api")) is not None]
    statements = [
        {
            "target": sl.qualified_name(body.namespace, f.target),
            "sources": [sl.qualified_name(body.namespace, r) for r in f.sources],
            "columns": {
                col: [{"asset": sl.qualified_name(body.namespace, r), "column": c} for r, c in refs]
                for col, refs in f.columns.items()
            },
            "note": f.note,
        }
        for f in found
        if f.target is not None
    ]
    if body.dry_run or not payloads:
        return {"statements": statements, "applied": False, "event_ids": []}
    written = list(dict.fromkeys(sl.qualified_name(body.namespace, f.target) for f in found if f.target is not None))
    read_only = [q for f in found for r in f.sources if (q := sl.qualified_name(body.namespace, r)) not in written]
    await access.check_named_write(runtime, principal, written, read=list(dict.fromkeys(read_only)))
    events = [
        NewEvent(principal.tenant_id, str(p["downstreams"][0]), LINEAGE_UPSERT, p, principal.actor, request_id)  # type: ignore[index]
        for p in payloads
    ]
    accepted = await runtime.writer.append_many(principal.tenant_id, events)
    return {"statements": statements, "applied": True, "event_ids": [str(a.event_id) for a in accepted]}
