"""``/tenants/{tenant_id}/api-keys``: a tenant's API keys, for its admins. A new key is shown once.

``{tenant_id}`` must be the caller's own tenant: any other answers 404, exactly as an unknown one does.
A revoked key fails from the next request on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from lily.api import pagination
from lily.api.deps import Admin, RequestId, RuntimeDep
from lily.api.errors import problem_responses
from lily.api.routers.users import own_tenant
from lily.auth import accounts
from lily.domain.errors import NotFound
from lily.domain.principals import ApiKeyIn
from lily.domain.roles import Role

router = APIRouter(prefix="/tenants/{tenant_id}/api-keys", tags=["api keys"])

MAX_KEY_ID = 64


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    role: Role
    created_at: datetime


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself: shown this once, Lily keeps only its hash")


class ApiKeyPage(BaseModel):
    items: list[ApiKeyOut]
    next_cursor: str | None


def _out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ApiKeyOut.model_fields}


def _key_cursor(position: Any) -> bool:
    return pagination.short_name(position, MAX_KEY_ID)


@router.get("", response_model=ApiKeyPage, responses=problem_responses(404))
async def list_api_keys(
    tenant_id: str,
    principal: Admin,
    runtime: RuntimeDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The tenant's live keys (never their secrets), paginated."""
    own_tenant(principal, tenant_id)
    after = pagination.decode(cursor, valid=_key_cursor)
    rows = await accounts.list_api_keys(runtime.db, tenant_id, after=after, limit=limit + 1)
    return pagination.page([_out(r) for r in rows], limit, lambda k: k["key_id"])


@router.post("", status_code=201, response_model=ApiKeyCreated, responses=problem_responses(404))
async def create_api_key(
    tenant_id: str, body: ApiKeyIn, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    own_tenant(principal, tenant_id)
    row = await accounts.create_api_key(runtime.db, tenant_id, body, actor=principal.actor, request_id=request_id)
    return {**_out(row), "key": row["key"]}


@router.delete("/{key_id}", status_code=204, response_class=Response, responses=problem_responses(404, 409))
async def revoke_api_key(
    tenant_id: str, key_id: str, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> Response:
    """Revoke the key. Refused (409) for the tenant's last admin credential."""
    own_tenant(principal, tenant_id)
    if not pagination.short_name(key_id, MAX_KEY_ID):
        raise NotFound("no such API key")
    await accounts.revoke_api_key(runtime.db, tenant_id, key_id, actor=principal.actor, request_id=request_id)
    return Response(status_code=204)
