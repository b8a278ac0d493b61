"""Admin operations behind ``lily admin``: tenants, users, API keys. Each one is audited."""

from __future__ import annotations

from datetime import UTC, datetime

from lily.auth import passwords, tokens
from lily.domain.errors import Conflict, Invalid, NotFound
from lily.domain.roles import Role
from lily.domain.tenants import is_tenant_id
from lily.store import audit, identity
from lily.store.db import Database

ACTOR = "admin:cli"


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError as exc:
        raise Invalid(f"unknown role {role!r}; use one of {', '.join(r.value for r in Role)}", field="role") from exc


def _label(value: str, field: str, max_length: int = 256) -> str:
    """Names of users, keys and tenants: 1 to ``max_length`` printable characters."""
    if not value or len(value) > max_length or not value.isprintable():
        raise Invalid(f"{field} must be 1 to {max_length} printable characters", field=field)
    return value


async def create_tenant(db: Database, tenant_id: str, name: str | None = None) -> None:
    if not is_tenant_id(tenant_id):
        raise Invalid(
            f"tenant id {tenant_id!r} must be 1-63 lower-case letters, digits or '-', starting with a letter or digit",
            field="tenant_id",
        )
    if name is not None:
        _label(name, "name")
    async with db.tenant(tenant_id) as conn:
        if not await identity.create_tenant(conn, tenant_id, name or tenant_id, {}):
            raise Conflict(f"tenant {tenant_id} already exists")
        await audit.write_audit(
            conn, tenant_id, [{"action": "tenant.created", "actor": ACTOR, "at": datetime.now(UTC)}]
        )


async def create_user(db: Database, tenant_id: str, username: str, password: str, role: str) -> None:
    checked = _role(role)
    _label(username, "username")
    if len(password) < 8:
        raise Invalid("password must be at least 8 characters", field="password")
    if not is_tenant_id(tenant_id):
        raise NotFound(f"tenant {tenant_id} does not exist")
    async with db.tenant(tenant_id) as conn:
        if await identity.get_tenant(conn, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        if not await identity.create_user(conn, tenant_id, username, passwords.hash_password(password), checked.value):
            raise Conflict(f"user {username} already exists in {tenant_id}")
        await audit.write_audit(
            conn,
            tenant_id,
            [
                {
                    "action": "user.created",
                    "actor": ACTOR,
                    "at": datetime.now(UTC),
                    "detail": {"username": username, "role": checked.value},
                }
            ],
        )


async def create_api_key(db: Database, tenant_id: str, name: str, role: str) -> str:
    """Create a key and return it; only its hash is kept, so this is the one time it is shown."""
    checked = _role(role)
    _label(name, "name")
    key_id, key, key_hash = tokens.new_api_key(tenant_id)
    if not is_tenant_id(tenant_id):
        raise NotFound(f"tenant {tenant_id} does not exist")
    async with db.tenant(tenant_id) as conn:
        if await identity.get_tenant(conn, tenant_id) is None:
            raise NotFound(f"tenant {tenant_id} does not exist")
        await identity.create_api_key(conn, tenant_id, key_id, name, key_hash, checked.value)
        await audit.write_audit(
            conn,
            tenant_id,
            [
                {
                    "action": "api_key.created",
                    "actor": ACTOR,
                    "at": datetime.now(UTC),
                    "detail": {"key_id": key_id, "name": name, "role": checked.value},
                }
            ],
        )
    return key
