"""``/metadata``: create (upsert), read with history, replace, soft-delete, search, audit trail."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response
from pydantic import StringConstraints

from lily.api import pagination, writes
from lily.api.deps import Editor, RequestId, RuntimeDep, Viewer
from lily.api.responses import FastJSON
from lily.domain import assets as rules
from lily.domain.errors import NotFound, PreconditionFailed
from lily.domain.events import ASSET_DELETE, ASSET_REPLACE, ASSET_UPSERT, NewEvent
from lily.store import assets as store
from lily.store import audit as store_audit
from lily.store.db import Conn

SearchTerm = Annotated[str, StringConstraints(max_length=256, pattern=rules.NO_NUL)]

# Listed before ``item_router`` so /metadata/search never matches /metadata/{asset_id}.
router = APIRouter(prefix="/metadata", tags=["metadata"])
item_router = APIRouter(prefix="/metadata", tags=["metadata"])


def asset_response(snapshot: dict[str, Any], status: int = 200, **extra: Any) -> FastJSON:
    return FastJSON(
        {**snapshot, **extra},
        status_code=status,
        headers={
            "ETag": rules.etag(snapshot["asset_id"], snapshot["version"]),
            "Location": f"/lily/v1/metadata/{snapshot['asset_id']}",
        },
    )


def render_version(runtime: Any, tenant_id: str) -> writes.Render:
    """Answer a write with the version it produced (not whatever is current by now)."""

    async def render(conn: Conn, result: dict[str, Any]) -> Response:
        snap = await store.version_snapshot(conn, tenant_id, UUID(result["asset_id"]), result["version"])
        assert snap is not None
        return asset_response(snap, 201 if result.get("created") else 200)

    return render


@router.post("", status_code=201, responses={200: {"description": "Updated"}, 202: {"description": "Accepted"}})
async def create_or_update(
    body: rules.AssetIn, request: Request, principal: Editor, runtime: RuntimeDep, request_id: RequestId
) -> Response:
    payload = body.model_dump(mode="json", exclude_unset=True)
    payload["qualified_name"], payload["type"] = body.qualified_name, body.type
    event = NewEvent(principal.tenant_id, body.qualified_name, ASSET_UPSERT, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, render_version(runtime, principal.tenant_id))


@router.get("/search")
async def search(
    principal: Viewer,
    runtime: RuntimeDep,
    q: Annotated[
        str | None,
        Query(max_length=512, pattern=rules.NO_NUL, description="Full text: name, qualified name, description"),
    ] = None,
    qualified_name: Annotated[str | None, Query(max_length=1024, pattern=rules.NO_NUL)] = None,
    type: Annotated[list[SearchTerm] | None, Query(description="Asset types; repeat for any of several")] = None,
    tag: Annotated[list[SearchTerm] | None, Query(description="Tags; repeat to require all")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = pagination.decode(cursor, valid=pagination.rank_and_id)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        rows = await store.search(
            conn,
            principal.tenant_id,
            q=q,
            qualified_name=qualified_name,
            types=[t.lower() for t in type or []],
            tags=tag or [],
            after=tuple(after) if after else None,
            limit=limit + 1,
        )
    result = pagination.page(rows, limit, lambda r: [r["rank"], str(r["asset_id"])])
    result["items"] = [rules.to_document(r) for r in result["items"]]
    return result


@router.get("/audit/{asset_id}")
async def audit_trail(
    asset_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    after = pagination.decode(cursor, valid=pagination.positive_int)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        if not await store.exists_ever(conn, principal.tenant_id, asset_id):
            raise NotFound(f"asset {asset_id} does not exist")
        rows = await store_audit.audit_trail(conn, principal.tenant_id, asset_id, after_id=after, limit=limit + 1)
    return pagination.page(rows, limit, lambda r: r["audit_id"])


@item_router.get("/{asset_id}")
async def get_asset(
    asset_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    include_deleted: bool = False,
    history_limit: Annotated[int, Query(ge=1, le=200)] = 20,
    history_cursor: str | None = None,
) -> Response:
    before = pagination.decode(history_cursor, field="history_cursor", valid=pagination.positive_int)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        row = await store.get(conn, principal.tenant_id, asset_id, include_deleted=include_deleted)
        if row is None:
            raise NotFound(f"asset {asset_id} does not exist")
        versions = await store.history(
            conn, principal.tenant_id, asset_id, before_version=before, limit=history_limit + 1
        )
    history = pagination.page(versions, history_limit, lambda v: v["version"])
    return asset_response(rules.to_document(row), history=history)


@item_router.put("/{asset_id}")
async def replace_asset(
    asset_id: UUID,
    body: rules.AssetReplace,
    request: Request,
    principal: Editor,
    runtime: RuntimeDep,
    request_id: RequestId,
    if_match: Annotated[str | None, Header(description="ETag of the version this replaces")] = None,
) -> Response:
    subject = await _subject(runtime, principal.tenant_id, asset_id, if_match)
    fields = body.model_dump(mode="json")
    payload = {
        "asset_id": str(asset_id),
        "fields": fields,
        "if_version": rules.parse_if_match(if_match, asset_id) if if_match else None,
    }
    event = NewEvent(principal.tenant_id, subject, ASSET_REPLACE, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, render_version(runtime, principal.tenant_id))


@item_router.delete("/{asset_id}")
async def delete_asset(
    asset_id: UUID,
    request: Request,
    principal: Editor,
    runtime: RuntimeDep,
    request_id: RequestId,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    subject = await _subject(runtime, principal.tenant_id, asset_id, if_match)
    payload = {"asset_id": str(asset_id), "if_version": rules.parse_if_match(if_match, asset_id) if if_match else None}
    event = NewEvent(principal.tenant_id, subject, ASSET_DELETE, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, render_version(runtime, principal.tenant_id))


async def _subject(runtime: Any, tenant_id: str, asset_id: UUID, if_match: str | None) -> str:
    """The asset's qualified name (its log subject); fails early on unknown ids and stale ETags.

    The pipeline checks the version again when it applies, since another write may land in between.
    """
    async with runtime.db.tenant(tenant_id) as conn:
        row = await store.get(conn, tenant_id, asset_id)
    if row is None:
        raise NotFound(f"asset {asset_id} does not exist")
    if if_match is not None:
        wanted = rules.parse_if_match(if_match, asset_id)
        if wanted != 0 and wanted != row["version"]:
            raise PreconditionFailed(
                f"If-Match names version {wanted if wanted > 0 else '?'}; the asset is at {row['version']}",
                current_version=row["version"],
            )
    return str(row["qualified_name"])
