"""Operations behind ``lily admin``: tenants, users, API keys. Each one is audited as ``admin:cli``.

Users and keys go through :mod:`lily.auth.accounts`, the same operations as the admin API, so the CLI
and the API validate, refuse and audit alike.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from lily.auth import accounts, passwords
from lily.domain.errors import Conflict, Invalid, NotFound, invalid_from
from lily.domain.principals import ApiKeyIn, UserIn, UserPatch, check_name
from lily.domain.roles import Role
from lily.domain.tenants import is_tenant_id
from lily.store import audit, identity
from lily.store.db import Database

ACTOR = "admin:cli"
LIST_LIMIT = 10_000
M = TypeVar("M", bound=BaseModel)


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise Invalid(f"unknown role {role!r}; use one of {', '.join(r.value for r in Role)}", field="role") from exc


def _label(value: str, field: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise Invalid(f"{field} {exc}", field=field) from exc


def _existing_tenant_id(tenant_id: str) -> str:
    if not is_tenant_id(tenant_id):
        raise NotFound(f"tenant {tenant_id[:80]!r} does not exist")
    return tenant_id


async def _hash(password: str) -> str:
    return await asyncio.to_thread(passwords.hash_password, password)


def _parse(model: type[M], **fields: Any) -> M:
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise invalid_from(exc) from exc


async def create_tenant(db: Database, tenant_id: str, name: str | None = None) -> None:
    if not is_tenant_id(tenant_id):
        raise Invalid(
            f"tenant id {tenant_id!r} must be 1-63 lower-case letters, digits or '-', starting with a letter or digit",
            field="tenant_id",
        )
    if name is not None:
        _label(name, "name")
    async with db.tenant(tenant_id) as conn:
        # A deleted tenant's id stays taken: its rows (audit included) are still there.
        if not await identity.create_tenant(conn, tenant_id, name or tenant_id, {}):
            raise Conflict(f"tenant {tenant_id} already exists (or existed: ids of deleted tenants are not reused)")
        await audit.write_audit(
            conn, tenant_id, [{"action": "tenant.created", "actor": ACTOR, "at": datetime.now(UTC)}]
        )


async def delete_tenant(db: Database, tenant_id: str, *, actor: str = ACTOR, request_id: str | None = None) -> None:
    """Delete a tenant: from the next request on, none of its tokens or keys authenticates. Its rows stay."""
    _existing_tenant_id(tenant_id)
    async with db.tenant(tenant_id) as conn:
        if not await identity.delete_tenant(conn, tenant_id):
            raise NotFound(f"tenant {tenant_id} does not exist")
        await audit.write_audit(
            conn,
            tenant_id,
            [{"action": "tenant.deleted", "actor": actor, "request_id": request_id, "at": datetime.now(UTC)}],
        )


async def create_user(
    db: Database, tenant_id: str, username: str, password: str, role: str, groups: list[str] | None = None
) -> None:
    body = _parse(UserIn, username=username, password=password, role=_role(role), groups=groups)
    await accounts.create_user(
        db, _existing_tenant_id(tenant_id), body, hash_password=_hash, actor=ACTOR, request_id=None
    )


async def list_users(db: Database, tenant_id: str) -> list[dict[str, Any]]:
    return await accounts.list_users(db, await _live(db, tenant_id), after=None, limit=LIST_LIMIT)


async def update_user(
    db: Database,
    tenant_id: str,
    username: str,
    *,
    role: str | None = None,
    groups: list[str] | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> dict[str, Any]:
    patch = _parse(UserPatch, role=_role(role) if role else None, groups=groups, disabled=disabled, password=password)
    return await accounts.update_user(
        db, await _live(db, tenant_id), username, patch, hash_password=_hash, actor=ACTOR, request_id=None
    )


async def delete_user(db: Database, tenant_id: str, username: str) -> None:
    await accounts.delete_user(db, await _live(db, tenant_id), username, actor=ACTOR, request_id=None)


async def create_api_key(db: Database, tenant_id: str, name: str, role: str) -> str:
    """Create a key and return it; only its hash is kept, so this is the one time it is shown."""
    body = _parse(ApiKeyIn, name=name, role=_role(role))
    created = await accounts.create_api_key(db, _existing_tenant_id(tenant_id), body, actor=ACTOR, request_id=None)
    key: str = created["key"]
    return key


async def list_api_keys(db: Database, tenant_id: str) -> list[dict[str, Any]]:
    return await accounts.list_api_keys(db, await _live(db, tenant_id), after=None, limit=LIST_LIMIT)


async def revoke_api_key(db: Database, tenant_id: str, key_id: str) -> None:
    """An operator may revoke any key, the tenant's last admin key included (a leaked key must go)."""
    await accounts.revoke_api_key(
        db, await _live(db, tenant_id), key_id, actor=ACTOR, request_id=None, keep_an_admin=False
    )


async def _live(db: Database, tenant_id: str) -> str:
    _existing_tenant_id(tenant_id)
    async with db.tenant(tenant_id) as conn:
        if await identity.get_tenant(conn, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
    return tenant_id
