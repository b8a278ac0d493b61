"""A tenant's users and API keys: the operations the admin API and ``lily admin`` share.

Every change is audited with who made it. The API never leaves a tenant without an admin: demoting,
disabling or deleting its last enabled admin user, or revoking its last admin key when it has no admin
user, is refused with 409 (an operator can still revoke any key from the CLI).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from lily.auth import tokens
from lily.domain.errors import Conflict, NotFound
from lily.domain.principals import ApiKeyIn, UserIn, UserPatch
from lily.domain.roles import Role
from lily.store import audit, identity
from lily.store.db import Conn, Database

HashPassword = Callable[[str], Awaitable[str]]


async def _audit(conn: Conn, tenant_id: str, action: str, actor: str, request_id: str | None, **detail: Any) -> None:
    entry = {"action": action, "actor": actor, "request_id": request_id, "at": datetime.now(UTC), "detail": detail}
    await audit.write_audit(conn, tenant_id, [entry])


async def _live_tenant(conn: Conn, tenant_id: str) -> None:
    if await identity.get_tenant(conn, tenant_id) is None:
        raise NotFound(f"tenant {tenant_id} does not exist")


def _no_user(username: str) -> NotFound:
    return NotFound(f"user {username[:80]!r} does not exist")


async def create_user(
    db: Database, tenant_id: str, body: UserIn, *, hash_password: HashPassword, actor: str, request_id: str | None
) -> dict[str, Any]:
    # Hashed before the transaction starts: a pooled connection is never held while argon2 runs.
    password_hash = await hash_password(body.password)
    async with db.tenant(tenant_id) as conn:
        await _live_tenant(conn, tenant_id)
        row = await identity.create_user(
            conn, tenant_id, body.username, password_hash, body.role.value, body.groups, body.disabled
        )
        if row is None:
            raise Conflict(f"user {body.username[:80]!r} already exists", field="username")
        await _audit(
            conn,
            tenant_id,
            "user.created",
            actor,
            request_id,
            username=body.username,
            role=body.role.value,
            groups=body.groups,
            disabled=body.disabled,
        )
    return row


async def list_users(db: Database, tenant_id: str, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        return await identity.list_users(conn, tenant_id, after=after, limit=limit)


async def get_user(db: Database, tenant_id: str, username: str) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        row = await identity.get_user(conn, tenant_id, username)
    if row is None:
        raise _no_user(username)
    return row


def _is_enabled_admin(role: str, disabled: bool) -> bool:
    return role == Role.admin.value and not disabled


async def update_user(
    db: Database,
    tenant_id: str,
    username: str,
    patch: UserPatch,
    *,
    hash_password: HashPassword,
    actor: str,
    request_id: str | None,
) -> dict[str, Any]:
    password_hash = await hash_password(patch.password) if patch.password is not None else None
    async with db.tenant(tenant_id) as conn:
        admins = await identity.lock_admin_users(conn, tenant_id)
        before = await identity.get_user(conn, tenant_id, username)
        if before is None:
            raise _no_user(username)
        role = patch.role.value if patch.role is not None else before["role"]
        disabled = patch.disabled if patch.disabled is not None else before["disabled"]
        if _is_enabled_admin(before["role"], before["disabled"]) and not _is_enabled_admin(role, disabled):
            _keep_an_admin(admins, username, "demote or disable")
        changes: dict[str, Any] = {}
        for field, new in (("role", role), ("groups", patch.groups), ("disabled", disabled)):
            if new is not None and new != before[field]:
                changes[field] = {"from": before[field], "to": new}
        if password_hash is not None:
            changes["password"] = "changed"
        if not changes:
            return before
        row = await identity.update_user(
            conn,
            tenant_id,
            username,
            role=patch.role.value if patch.role is not None else None,
            groups=patch.groups,
            disabled=patch.disabled,
            password_hash=password_hash,
            end_sessions=password_hash is not None or (disabled and not before["disabled"]),
        )
        if row is None:  # deleted meanwhile (only admin rows are locked above)
            raise _no_user(username)
        await _audit(conn, tenant_id, "user.updated", actor, request_id, username=username, changes=changes)
    return row


def _keep_an_admin(admins: list[str], username: str, what: str) -> None:
    if admins == [username]:
        raise Conflict(f"cannot {what} {username[:80]!r}: the tenant's last enabled admin; make another admin first")


async def delete_user(db: Database, tenant_id: str, username: str, *, actor: str, request_id: str | None) -> None:
    async with db.tenant(tenant_id) as conn:
        admins = await identity.lock_admin_users(conn, tenant_id)
        if username in admins:
            _keep_an_admin(admins, username, "delete")
        if not await identity.delete_user(conn, tenant_id, username):
            raise _no_user(username)
        await _audit(conn, tenant_id, "user.deleted", actor, request_id, username=username)


async def create_api_key(
    db: Database, tenant_id: str, body: ApiKeyIn, *, actor: str, request_id: str | None
) -> dict[str, Any]:
    """The new key's row with ``key`` added: the one time the key is shown (only its hash is kept)."""
    key_id, key, key_hash = tokens.new_api_key(tenant_id)
    async with db.tenant(tenant_id) as conn:
        await _live_tenant(conn, tenant_id)
        row = await identity.create_api_key(conn, tenant_id, key_id, body.name, key_hash, body.role.value)
        await _audit(
            conn, tenant_id, "api_key.created", actor, request_id, key_id=key_id, name=body.name, role=body.role.value
        )
    return {**row, "key": key}


async def list_api_keys(db: Database, tenant_id: str, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    async with db.tenant(tenant_id) as conn:
        return await identity.list_api_keys(conn, tenant_id, after=after, limit=limit)


async def revoke_api_key(
    db: Database, tenant_id: str, key_id: str, *, actor: str, request_id: str | None, keep_an_admin: bool = True
) -> dict[str, Any]:
    async with db.tenant(tenant_id) as conn:
        if keep_an_admin:
            admin_keys = await identity.lock_admin_keys(conn, tenant_id)
            if admin_keys == [key_id] and not await identity.lock_admin_users(conn, tenant_id):
                raise Conflict(f"cannot revoke {key_id}: the tenant's last admin credential; create another first")
        row = await identity.revoke_api_key(conn, tenant_id, key_id, actor)
        if row is None:
            raise NotFound(f"API key {key_id[:80]!r} does not exist")
        await _audit(conn, tenant_id, "api_key.revoked", actor, request_id, key_id=key_id, name=row["name"])
    return row
