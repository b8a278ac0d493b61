"""``/tenants/{tenant_id}/users``: a tenant's users, for its admins.

``{tenant_id}`` must be the caller's own tenant: any other answers 404, exactly as an unknown one does.
Passwords are write-only. Changes apply to the user's tokens from the next request on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from lily.api import pagination
from lily.api.deps import Admin, Principal, RequestId, RuntimeDep
from lily.api.errors import problem_responses
from lily.auth import accounts
from lily.domain.errors import NotFound
from lily.domain.principals import MAX_NAME, UserIn, UserPatch
from lily.domain.roles import Role

router = APIRouter(prefix="/tenants/{tenant_id}/users", tags=["users"])


class UserOut(BaseModel):
    username: str
    role: Role
    groups: list[str]
    disabled: bool
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None


def own_tenant(principal: Principal, tenant_id: str) -> str:
    if tenant_id != principal.tenant_id:
        raise NotFound(f"tenant {tenant_id[:80]!r} does not exist")
    return tenant_id


def _known_name(username: str) -> str:
    # A name no user can have is simply not there (and never reaches SQL).
    if not pagination.short_name(username, MAX_NAME):
        raise NotFound("no such user")
    return username


def _out(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in UserOut.model_fields}


def _username_cursor(position: Any) -> bool:
    return pagination.short_name(position, MAX_NAME)


@router.get("", response_model=UserPage, responses=problem_responses(404))
async def list_users(
    tenant_id: str,
    principal: Admin,
    runtime: RuntimeDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The tenant's users by name, paginated."""
    own_tenant(principal, tenant_id)
    after = pagination.decode(cursor, valid=_username_cursor)
    rows = await accounts.list_users(runtime.db, tenant_id, after=after, limit=limit + 1)
    return pagination.page([_out(r) for r in rows], limit, lambda u: u["username"])


@router.post("", status_code=201, response_model=UserOut, responses=problem_responses(404, 409))
async def create_user(
    tenant_id: str, body: UserIn, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    own_tenant(principal, tenant_id)
    row = await accounts.create_user(
        runtime.db, tenant_id, body, hash_password=runtime.hasher.hash, actor=principal.actor, request_id=request_id
    )
    return _out(row)


@router.get("/{username}", response_model=UserOut, responses=problem_responses(404))
async def get_user(tenant_id: str, username: str, principal: Admin, runtime: RuntimeDep) -> dict[str, Any]:
    own_tenant(principal, tenant_id)
    return _out(await accounts.get_user(runtime.db, tenant_id, _known_name(username)))


@router.patch("/{username}", response_model=UserOut, responses=problem_responses(404, 409))
async def update_user(
    tenant_id: str, username: str, body: UserPatch, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> dict[str, Any]:
    """Change role, groups, disabled or password. Refused (409) for the tenant's last enabled admin."""
    own_tenant(principal, tenant_id)
    row = await accounts.update_user(
        runtime.db,
        tenant_id,
        _known_name(username),
        body,
        hash_password=runtime.hasher.hash,
        actor=principal.actor,
        request_id=request_id,
    )
    return _out(row)


@router.delete("/{username}", status_code=204, response_class=Response, responses=problem_responses(404, 409))
async def delete_user(
    tenant_id: str, username: str, principal: Admin, runtime: RuntimeDep, request_id: RequestId
) -> Response:
    """Delete the user; its tokens fail from the next request on. Refused (409) for the last admin."""
    own_tenant(principal, tenant_id)
    await accounts.delete_user(
        runtime.db, tenant_id, _known_name(username), actor=principal.actor, request_id=request_id
    )
    return Response(status_code=204)
