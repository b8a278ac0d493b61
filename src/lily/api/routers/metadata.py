"""``/metadata``: create (upsert), read with history, replace, soft-delete, audit trail (search: ``search.py``)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from lily.api import access, pagination, writes
from lily.api.deps import Principal, RequestId, RuntimeDep, Viewer, ViewerReading
from lily.api.errors import problem_responses
from lily.api.models import WRITE_RESPONSES, AssetDocument, AssetWithHistory, AuditPage, IdempotencyKeyHeader
from lily.api.responses import FastJSON
from lily.domain import assets as rules
from lily.domain.errors import Invalid, NotFound
from lily.domain.events import ASSET_DELETE, ASSET_REPLACE, ASSET_UPSERT, NewEvent
from lily.domain.roles import Role
from lily.domain.round_trip import ASSET_READ_ONLY, AssetReplaceDocument, changed_read_only
from lily.domain.rules import check_if_match, require_asset
from lily.pipeline.writer import StaleCheck
from lily.store import assets as store
from lily.store import audit as store_audit
from lily.store.db import Conn

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


def _answer_version(snapshot: dict[str, Any], result: dict[str, Any]) -> Response:
    return asset_response(snapshot, 201 if result.get("created") else 200)


# A write of an asset answers with the version it produced (not whatever is current by now).
ANSWER_VERSION = writes.VersionAnswer(_answer_version)


@router.post(
    "",
    status_code=201,
    response_model=AssetDocument,
    responses={
        200: {"description": "Updated", "model": AssetDocument},
        **WRITE_RESPONSES,
        **problem_responses(409, 412, 413),
    },
)
async def create_or_update(
    body: rules.AssetIn,
    request: Request,
    writing: access.CheckedWriter,
    runtime: RuntimeDep,
    request_id: RequestId,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    payload = body.model_dump(mode="json", exclude_unset=True)
    payload["qualified_name"], payload["type"] = body.qualified_name, body.type
    try:
        return await _upsert(runtime, request, writing, body, payload, request_id)
    except StaleCheck:  # the caller's credential or the tenant's policies moved: judged again, as it is now
        return await _upsert(runtime, request, await writing.confirmed(), body, payload, request_id)


async def _upsert(
    runtime: Any,
    request: Request,
    writing: access.Writing,
    body: rules.AssetIn,
    payload: dict[str, Any],
    request_id: str,
) -> Response:
    principal = writing.principal
    await access.check_named_write(
        runtime, principal, [body.qualified_name], type=body.type, tags=payload.get("tags"), checker=writing.checker
    )
    event = NewEvent(principal.tenant_id, body.qualified_name, ASSET_UPSERT, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, ANSWER_VERSION, checked=writing.unconfirmed)


@router.get("/audit/{asset_id}", response_model=AuditPage, responses=problem_responses(404))
async def audit_trail(
    asset_id: UUID,
    principal: Viewer,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: pagination.Cursor = None,
) -> Response:
    after = pagination.decode(cursor, valid=pagination.positive_int)
    async with runtime.db.tenant(principal.tenant_id) as conn:
        if not await store.exists_ever(conn, principal.tenant_id, asset_id):
            raise NotFound(f"asset {asset_id} does not exist")
        rows = await store_audit.audit_trail(conn, principal.tenant_id, asset_id, after_id=after, limit=limit + 1)
    return FastJSON(pagination.page(rows, limit, lambda r: r["audit_id"]))


# Documented, not re-validated: the route answers an already-serialised FastJSON (see lily.api.models).
@item_router.get("/{asset_id}", response_model=AssetWithHistory, responses=problem_responses(404))
async def get_asset(
    asset_id: UUID,
    reading: ViewerReading,
    include_deleted: bool = False,
    history_limit: Annotated[int, Query(ge=1, le=200)] = 20,
    history_cursor: pagination.Cursor = None,
) -> Response:
    """One round trip for a caller this process knows: the credential's check, the asset and its history."""
    before = pagination.decode(history_cursor, field="history_cursor", valid=pagination.positive_int)
    principal, (found, versions) = await reading.read_one(
        lambda conn, caller: store.read_with_history(
            conn,
            reading.tenant_id,
            caller,
            asset_id,
            include_deleted=include_deleted,
            before_version=before,
            limit=history_limit + 1,
        )
    )
    row = require_asset(found, asset_id, include_deleted=include_deleted)
    if principal.role is Role.admin:  # the one reader that may be audited (a write: not in the read above)
        async with reading.runtime.db.tenant(principal.tenant_id) as conn:
            await access.audit_admin_read(conn, principal, row)
    history = pagination.page(versions, history_limit, lambda v: v["version"])
    return asset_response(rules.to_document(row), history=history)


@item_router.put(
    "/{asset_id}",
    response_model=AssetDocument,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409, 412, 413)},
)
async def replace_asset(
    asset_id: UUID,
    body: AssetReplaceDocument,
    request: Request,
    principal: access.Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
    if_match: Annotated[str | None, Header(max_length=200, description="ETag of the version this replaces")] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Replace every mutable field. The body may be the document ``GET`` returned: its read-only
    members (``asset_id``, ``version``, timestamps, ``history`` …) must then be unchanged (else 422
    naming them), and ``version`` acts as ``If-Match``."""
    subject = await _subject(runtime, principal, asset_id, if_match, type=body.type, tags=body.tags)
    await _check_read_only(runtime, principal.tenant_id, asset_id, body)
    if_version = rules.parse_if_match(if_match, asset_id) if if_match else body.version
    payload = {"asset_id": str(asset_id), "fields": body.mutable(), "if_version": if_version}
    event = NewEvent(principal.tenant_id, subject, ASSET_REPLACE, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, ANSWER_VERSION)


@item_router.delete(
    "/{asset_id}",
    response_model=AssetDocument,
    responses={**WRITE_RESPONSES, **problem_responses(404, 409, 412)},
)
async def delete_asset(
    asset_id: UUID,
    request: Request,
    principal: access.Writer,
    runtime: RuntimeDep,
    request_id: RequestId,
    if_match: Annotated[str | None, Header(max_length=200)] = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    subject = await _subject(runtime, principal, asset_id, if_match)
    payload = {"asset_id": str(asset_id), "if_version": rules.parse_if_match(if_match, asset_id) if if_match else None}
    event = NewEvent(principal.tenant_id, subject, ASSET_DELETE, payload, principal.actor, request_id)
    return await writes.write(runtime, request, principal, event, payload, ANSWER_VERSION)


async def _subject(
    runtime: Any,
    principal: Principal,
    asset_id: UUID,
    if_match: str | None,
    *,
    type: str | None = None,
    tags: list[str] | None = None,
) -> str:
    """The asset's qualified name (its log subject); fails early on unknown (or unreadable) ids, on an
    asset the caller may not write (as it is, or as ``type`` and ``tags`` would leave it) and stale ETags.

    The pipeline checks the version again when it applies, since another write may land in between.
    """
    async with runtime.db.tenant(principal.tenant_id) as conn:
        asset = require_asset(await store.get(conn, principal.tenant_id, asset_id), asset_id)
        await access.check_asset(conn, principal, asset, type=type, tags=tags)
    check_if_match(rules.parse_if_match(if_match, asset_id) if if_match is not None else None, asset.version)
    return asset.qualified_name


async def _check_read_only(runtime: Any, tenant_id: str, asset_id: UUID, body: AssetReplaceDocument) -> None:
    """422 naming each read-only member of ``body`` that differs from the stored asset."""
    sent = body.model_fields_set & {*ASSET_READ_ONLY, "history"}
    if not sent:
        return
    async with runtime.db.tenant(tenant_id) as conn:
        asset = require_asset(await store.get(conn, tenant_id, asset_id), asset_id)
        stored = rules.to_document(asset)
        errors = changed_read_only(body, stored, ASSET_READ_ONLY)
        if body.history is not None and not await _same_history(conn, tenant_id, asset_id, body.history):
            errors.append({"field": "history", "message": "history is read-only; it differs from the stored one"})
    if errors:
        raise Invalid("; ".join(e["message"] for e in errors), errors=errors)


async def _same_history(conn: Conn, tenant_id: str, asset_id: UUID, given: dict[str, Any]) -> bool:
    """Whether ``given`` is a page of the asset's history exactly as GET renders it (any page)."""
    items = given.get("items")
    if not isinstance(items, list) or set(given) != {"items", "next_cursor"}:
        return False
    if not items:  # every asset has at least one version, so GET never shows an empty first page
        return False
    newest = items[0].get("version") if isinstance(items[0], dict) else None
    if type(newest) is not int or not 0 < newest < 2**31:
        return False
    versions = await store.history(conn, tenant_id, asset_id, before_version=newest + 1, limit=len(items) + 1)
    page = pagination.page(versions, len(items), lambda v: v["version"])
    return bool(orjson.loads(FastJSON(page).body) == given)
