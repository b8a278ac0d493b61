"""``/metadata/lineage``: record lineage, read the graph (JSON, Mermaid, DOT), impact, removal."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from lily.api import access, writes
from lily.api.deps import Principal, RequestId, RuntimeDep, Viewer
from lily.api.errors import problem_responses
from lily.api.models import WRITE_RESPONSES, IdempotencyKeyHeader, LineageWritten
from lily.api.responses import FastJSON
from lily.domain import lineage as graph
from lily.domain.assets import Asset
from lily.domain.events import LINEAGE_DELETE, LINEAGE_UPSERT, NewEvent
from lily.domain.rules import refuse_deleted_links, require_asset
from lily.store import assets as store_assets
from lily.store import lineage as store_lineage
from lily.store.db import Conn

router = APIRouter(prefix="/metadata/lineage", tags=["lineage"])

DEPTH_HEADER = "Lily-Lineage-Depth"  # the depth used, after clamping to graph.MAX_DEPTH
TRUNCATED_HEADER = "Lily-Lineage-Truncated"  # "true" when the node limit cut the answer short


async def _names(
    runtime: Any, principal: Principal, refs: list[graph.AssetRef], writes: list[graph.AssetRef]
) -> dict[graph.AssetRef, str]:
    """Qualified name per reference. Ids must name assets of the caller's tenant (else 404); names may
    be new — the pipeline creates placeholders for them.

    A soft-deleted asset is refused however it is named, by id or by name: 409, saying it is deleted
    (writing the asset again restores it; then it can be linked). Lineage to a deleted asset would
    otherwise come back to life unseen, and an id and a name of the same asset must not be answered
    differently. The apply stage makes the same check for writes from this API (this one answers
    before anything is appended; that one holds if the asset is deleted in between).
    """
    by_id = [r.asset_id for r in refs if r.asset_id is not None]
    by_name = [r.qualified_name for r in refs if r.qualified_name is not None]
    found: dict[UUID, Asset] = {}
    named: dict[str, Asset] = {}
    tenant_id = principal.tenant_id
    async with runtime.db.tenant(tenant_id) as conn:
        for asset_id in by_id:
            found[asset_id] = require_asset(
                await store_assets.get(conn, tenant_id, asset_id, include_deleted=True), asset_id, include_deleted=True
            )
        if by_name:
            named = await store_assets.current_by_names(conn, tenant_id, by_name)
        # Lineage changes its downstreams and its process; its upstreams must only be readable.
        qn = {r: found[r.asset_id].qualified_name if r.asset_id is not None else r.qualified_name or "" for r in refs}
        written = list(dict.fromkeys(qn[r] for r in writes))
        await access.check_named(conn, principal, written, read=[qn[r] for r in refs if qn[r] not in written])
    refuse_deleted_links(
        (f"{ref.asset_id} ({found[ref.asset_id].qualified_name})", found[ref.asset_id])
        if ref.asset_id is not None
        else (ref.qualified_name or "", named.get(ref.qualified_name or ""))
        for ref in refs
    )
    return {r: (found[r.asset_id].qualified_name if r.asset_id is not None else r.qualified_name or "") for r in refs}


@router.post(
    "",
    status_code=201,
    response_model=LineageWritten,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409, 413)},
)
async def record_lineage(
    body: graph.LineageIn,
    request: Request,
    principal: access.Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    names = await _names(
        runtime, principal, body.refs(), [*body.downstreams, *([body.process] if body.process else [])]
    )
    # Mappings may name an asset by id where the lists give its name (or the reverse): compare names.
    graph.check_mappings(body, names.__getitem__)
    downstreams = [names[r] for r in body.downstreams]
    payload: dict[str, Any] = {
        "upstreams": [names[r] for r in body.upstreams],
        "downstreams": downstreams,
        "process": names[body.process] if body.process else None,
        "column_mappings": [
            {
                "downstream": names[m.asset] if m.asset else downstreams[0],
                "column": m.column,
                "upstreams": [{"asset": names[u.asset], "column": u.column} for u in m.upstreams],
                "transformation": m.transformation,
            }
            for m in body.column_mappings
        ],
    }
    subject: str = payload["process"] or downstreams[0]
    event = NewEvent(principal.tenant_id, subject, LINEAGE_UPSERT, payload, principal.actor, request_id)

    async def render(conn: Conn, result: dict[str, Any]) -> Response:
        return FastJSON(result, status_code=201)

    return await writes.write(runtime, request, principal, event, payload, render)


@router.get(
    "/{asset_id}",
    response_model=graph.LineageGraph,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "text/vnd.graphviz": {"schema": {"type": "string"}},
            }
        },
        **problem_responses(404),
    },
)
async def lineage_graph(
    asset_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    direction: graph.Direction = "both",
    depth: Annotated[int, Query(ge=0, description=f"hops; capped at {graph.MAX_DEPTH}")] = graph.DEFAULT_DEPTH,
    limit: Annotated[int, Query(ge=1, le=graph.MAX_NODE_LIMIT)] = graph.DEFAULT_NODE_LIMIT,
    columns: bool = False,
    format: Literal["json", "mermaid", "dot"] = "json",
) -> Response:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        result = await store_lineage.traverse(conn, principal.tenant_id, asset_id, direction, depth, limit, columns)
    # The text formats have no room for the answer's bounds, so every format states them in headers too:
    # a pasted diagram cut by the node limit must not pass for the whole graph.
    headers = {DEPTH_HEADER: str(result.depth), TRUNCATED_HEADER: str(result.truncated).lower()}
    if format == "mermaid":
        return PlainTextResponse(graph.to_mermaid(result), headers=headers)
    if format == "dot":
        return PlainTextResponse(graph.to_dot(result), media_type="text/vnd.graphviz", headers=headers)
    return FastJSON(result.model_dump(mode="json"), headers=headers)


@router.get("/{asset_id}/impact", response_model=graph.ImpactReport, responses=problem_responses(404))
async def impact(
    asset_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    max_depth: Annotated[int, Query(ge=1)] = graph.MAX_DEPTH,
    limit: Annotated[int, Query(ge=1, le=graph.MAX_NODE_LIMIT)] = graph.DEFAULT_NODE_LIMIT,
) -> Response:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        report = await store_lineage.impact(conn, principal.tenant_id, asset_id, max_depth, limit)
    return FastJSON(report.model_dump(mode="json"))


@router.delete(
    "/{asset_id}",
    response_model=LineageWritten,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409)},
)
async def remove_lineage(
    asset_id: UUID,
    request: Request,
    principal: access.Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
    idempotency_key: IdempotencyKeyHeader = None,
    direction: graph.Direction = "both",
) -> Response:
    async with runtime.db.tenant(principal.tenant_id) as conn:
        # A deleted asset keeps its edges (its graph still shows it, marked deleted), so they can be removed.
        row = require_asset(
            await store_assets.get(conn, principal.tenant_id, asset_id, include_deleted=True),
            asset_id,
            include_deleted=True,
        )
        await access.check_asset(conn, principal, row)
    payload = {"asset_id": str(asset_id), "direction": direction}
    event = NewEvent(principal.tenant_id, row.qualified_name, LINEAGE_DELETE, payload, principal.actor, request_id)

    async def render(conn: Conn, result: dict[str, Any]) -> Response:
        return FastJSON(result)

    return await writes.write(runtime, request, principal, event, payload, render)
