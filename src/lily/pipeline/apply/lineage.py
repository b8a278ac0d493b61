"""Applies lineage writes: resolve names (creating placeholders), upsert edges and column mappings,
or remove an asset's lineage. Recorded in the audit log; a removal is also a version of the asset.

Payload of ``lineage.upsert`` (the API and the OpenLineage connector both produce it)::

    {"upstreams": [qn, ...], "downstreams": [qn, ...], "process": qn | null,
     "column_mappings": [{"downstream": qn, "column": c, "upstreams": [{"asset": qn, "column": c}],
                          "transformation": str | null}],
     "types": {qn: asset type for a placeholder}}
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from pydantic import ValidationError

from lily.domain import changes as change_types
from lily.domain import lineage as graph
from lily.domain.audit import AuditEntry
from lily.domain.errors import Invalid, LilyError, NotFound, invalid_from
from lily.domain.events import LINEAGE_DELETE, LINEAGE_UPSERT
from lily.domain.rules import check_lineage_direction, refuse_deleted_links, require_asset
from lily.domain.versions import LineageRemoved, Placeholder, next_version
from lily.pipeline.apply.changes import ChangeSet, writer
from lily.pipeline.context import BatchContext
from lily.pipeline.model import PipelineEvent
from lily.store import assets as store_assets
from lily.store import audit as store_audit
from lily.store import lineage as store_lineage

PLACEHOLDER_TYPE = "unknown"
API_SOURCE = "api"  # NewEvent.source of writes made through /lily/v1


def to_request(payload: dict[str, Any]) -> graph.LineageIn:
    """The event payload (qualified names only) as the domain's lineage request."""

    def ref(qn: str) -> dict[str, str]:
        return {"qualified_name": qn}

    return graph.LineageIn.model_validate(
        {
            "upstreams": [ref(q) for q in payload.get("upstreams", [])],
            "downstreams": [ref(q) for q in payload.get("downstreams", [])],
            "process": ref(payload["process"]) if payload.get("process") else None,
            "column_mappings": [
                {
                    "column": m["column"],
                    "asset": ref(m["downstream"]) if m.get("downstream") else None,
                    "upstreams": [{"asset": ref(u["asset"]), "column": u["column"]} for u in m.get("upstreams", [])],
                    "transformation": m.get("transformation"),
                }
                for m in payload.get("column_mappings", [])
            ],
        }
    )


class LineageHandler:
    name = "lineage"
    kinds: tuple[str, ...] = (LINEAGE_UPSERT, LINEAGE_DELETE)

    def validate(self, event: PipelineEvent) -> None:
        if event.kind == LINEAGE_UPSERT:
            try:
                event.notes.request = to_request(event.payload)
            except (ValidationError, KeyError, TypeError) as exc:
                event.reject(
                    invalid_from(exc)
                    if isinstance(exc, ValidationError)
                    else Invalid(f"malformed lineage payload: {exc}", field="payload")
                )
        else:
            try:
                check_lineage_direction(event.payload.get("direction"))
            except Invalid as err:
                event.reject(err)

    async def apply(self, ctx: BatchContext, events: list[PipelineEvent]) -> None:
        for event in events:
            mark = ctx.changes_mark()
            try:
                # A savepoint per event: a failing statement must not abort the batch's transaction.
                async with ctx.conn.transaction():
                    if event.kind == LINEAGE_UPSERT:
                        event.applied(await self._upsert(ctx, event))
                    else:
                        event.applied(await self._delete(ctx, event))
            except LilyError as err:
                ctx.discard_changes_since(mark)  # what it emitted rolled back with the savepoint
                event.reject(err)

    async def _upsert(self, ctx: BatchContext, event: PipelineEvent) -> dict[str, Any]:
        request: graph.LineageIn = event.notes.request
        names = [r.qualified_name for r in request.refs() if r.qualified_name]
        ids, placeholders = await self._resolve(ctx, event, names)
        try:
            plan = graph.plan(request, lambda r: ids[r.qualified_name or ""])
        except KeyError as exc:
            raise NotFound(f"unknown asset {exc}") from exc
        stored = await store_lineage.upsert_edges(ctx.conn, ctx.tenant_id, plan.edges)
        columns = await store_lineage.upsert_column_lineage(ctx.conn, ctx.tenant_id, plan.columns)
        by_id = {v: k for k, v in ids.items()}
        created = [e for e in stored if e.created]
        audits = [
            AuditEntry(
                "lineage.added",
                event.actor,
                ctx.now,
                request_id=event.request_id,
                event_id=event.event_id,
                asset_id=down,
                detail={
                    "upstreams": sorted(by_id[e.upstream_id] for e in created if e.downstream_id == down),
                    "process": request.process.qualified_name if request.process else None,
                    "source": event.source,
                },
            )
            for down in dict.fromkeys(e.downstream_id for e in created)
        ]
        mapped: dict[UUID, set[str]] = {}
        if columns.written or columns.removed:
            # On the downstream assets the mappings are about, not on every downstream of the request.
            for c in plan.columns:
                mapped.setdefault(c.downstream_id, set()).add(c.downstream_column)
            audits += [
                AuditEntry(
                    "lineage.columns",
                    event.actor,
                    ctx.now,
                    request_id=event.request_id,
                    event_id=event.event_id,
                    asset_id=down,
                    detail={"columns": sorted(cols), "written": columns.written, "removed": columns.removed},
                )
                for down, cols in mapped.items()
            ]
        await store_audit.write_audit(ctx.conn, ctx.tenant_id, audits)
        _emit_added(ctx, event, request, created, by_id, mapped if columns.written or columns.removed else {}, columns)
        return {
            "edges": [
                {
                    "edge_id": str(e.edge_id),
                    "upstream": by_id[e.upstream_id],
                    "downstream": by_id[e.downstream_id],
                    "process": by_id.get(e.process_id) if e.process_id else None,
                    "created": e.created,
                }
                for e in stored
            ],
            "placeholders": placeholders,
            "columns": {"written": columns.written, "removed": columns.removed},
        }

    async def _resolve(
        self, ctx: BatchContext, event: PipelineEvent, names: list[str]
    ) -> tuple[dict[str, UUID], list[str]]:
        """Asset id per name, and the placeholders created: names nobody wrote yet become placeholders
        (a later real write fills them).

        A write from Lily's API that names a soft-deleted asset is refused (409, as the API answers
        before appending: see ``api.routers.lineage._names``). A connector's lineage is not: an
        OpenLineage event upserts its datasets and job itself, which restores them, but those upserts
        have their own subjects and may be applied after the lineage, which must not fail meanwhile.
        """
        current = await store_assets.current_by_names(ctx.conn, ctx.tenant_id, names)
        if event.source == API_SOURCE:
            refuse_deleted_links(sorted(current.items()))
        ids = {name: asset.asset_id for name, asset in current.items()}
        placeholders: list[str] = []
        missing = [n for n in names if n not in ids]
        if missing:
            types = event.payload.get("types") or {}
            who = writer(ctx, event)
            versions = [
                v
                for n in missing
                if (v := next_version(None, n, Placeholder(types.get(n, PLACEHOLDER_TYPE)), who)) is not None
            ]
            created = await store_assets.insert_placeholders(ctx.conn, ctx.tenant_id, [v.asset for v in versions])
            # Inserted already (only those nobody got there first): a version and an audit entry each.
            made = {a.qualified_name for a in created}
            batch = ChangeSet(ctx)
            for version in versions:
                if version.asset.qualified_name in made:
                    batch.add(event, version, detail={"referenced_by": "lineage"}, write_row=False)
            await batch.write()
            placeholders = [a.qualified_name for a in created]
            ids.update({v.asset.qualified_name: v.asset.asset_id for v in versions})
        return ids, placeholders

    async def _delete(self, ctx: BatchContext, event: PipelineEvent) -> dict[str, Any]:
        asset_id = UUID(event.payload["asset_id"])
        row = require_asset(
            await store_assets.get(ctx.conn, ctx.tenant_id, asset_id, include_deleted=True),
            asset_id,
            include_deleted=True,
        )
        removed = await store_lineage.delete_edges(ctx.conn, ctx.tenant_id, asset_id, event.payload["direction"])
        result = {"asset_id": str(asset_id), "removed": len(removed), "version": row.version}
        if not removed:
            return result
        what = {
            "removed": [
                {"edge_id": str(e.edge_id), "upstream_id": str(e.upstream_id), "downstream_id": str(e.downstream_id)}
                for e in removed
            ],
            "direction": event.payload["direction"],
        }
        version = next_version(row, row.qualified_name, LineageRemoved(what), writer(ctx, event))
        assert version is not None  # an existing asset always gets the version
        batch = ChangeSet(ctx)
        batch.add(event, version, detail={"removed": len(removed)})
        await batch.write()
        return {**result, "version": version.asset.version}


def _emit_added(
    ctx: BatchContext,
    event: PipelineEvent,
    request: graph.LineageIn,
    created: list[Any],
    by_id: dict[UUID, str],
    mapped: dict[UUID, set[str]],
    columns: Any,
) -> None:
    """``lineage.added`` on each downstream asset that got new edges, ``lineage.columns_changed`` on each
    whose column mappings were written (shapes: README, "Change events")."""
    process = request.process.qualified_name if request.process else None
    for down in dict.fromkeys(e.downstream_id for e in created):
        upstreams = sorted(by_id[e.upstream_id] for e in created if e.downstream_id == down)
        ctx.emit_change(
            change_types.LINEAGE_ADDED,
            event,
            asset_id=down,
            qualified_name=by_id[down],
            changes={"upstreams": change_types.cut(upstreams), "process": process},
        )
    for down, cols in mapped.items():
        ctx.emit_change(
            change_types.LINEAGE_COLUMNS_CHANGED,
            event,
            asset_id=down,
            qualified_name=by_id.get(down),
            changes={"columns": change_types.cut(sorted(cols)), "written": columns.written, "removed": columns.removed},
        )
