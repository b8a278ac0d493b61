"""Tenants, users, API keys, revoked tokens, login attempts and rate buckets in SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncCursor
from psycopg.types.json import Jsonb

from lily.store.db import Conn

if TYPE_CHECKING:
    from lily.auth.limits import LoginLimits, RateLimits


async def create_tenant(conn: Conn, tenant_id: str, name: str, config: dict[str, Any]) -> bool:
    cur = await conn.execute(
        "INSERT INTO tenants (tenant_id, name, config) VALUES (%s, %s, %s)"
        " ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
        [tenant_id, name, Jsonb(config)],
    )
    return await cur.fetchone() is not None


async def get_tenant(conn: Conn, tenant_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT tenant_id, name, config, created_at FROM tenants WHERE tenant_id = %s AND deleted_at IS NULL",
        [tenant_id],
    )
    return await cur.fetchone()


async def set_tenant_config(conn: Conn, tenant_id: str, config: dict[str, Any]) -> dict[str, Any]:
    cur = await conn.execute(
        "UPDATE tenants SET config = %s WHERE tenant_id = %s RETURNING tenant_id, name, config, created_at",
        [Jsonb(config), tenant_id],
    )
    row = await cur.fetchone()
    assert row is not None
    return row


USER_COLUMNS = "username, role, groups, disabled, created_at, updated_at"


async def delete_tenant(conn: Conn, tenant_id: str) -> bool:
    """Mark the tenant deleted (its rows stay); False when there is no live tenant of that id."""
    cur = await conn.execute(
        "UPDATE tenants SET deleted_at = now() WHERE tenant_id = %s AND deleted_at IS NULL RETURNING tenant_id",
        [tenant_id],
    )
    return await cur.fetchone() is not None


async def create_user(
    conn: Conn,
    tenant_id: str,
    username: str,
    password_hash: str,
    role: str,
    groups: Sequence[str] = (),
    disabled: bool = False,
) -> dict[str, Any] | None:
    """The new user, or None when the name is taken."""
    cur = await conn.execute(
        "INSERT INTO users (tenant_id, username, password_hash, role, groups, disabled) VALUES (%s, %s, %s, %s, %s, %s)"
        f" ON CONFLICT (tenant_id, username) DO NOTHING RETURNING {USER_COLUMNS}",
        [tenant_id, username, password_hash, role, list(groups), disabled],
    )
    return await cur.fetchone()


async def get_user(conn: Conn, tenant_id: str, username: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {USER_COLUMNS} FROM users WHERE tenant_id = %s AND username = %s", [tenant_id, username]
    )
    return await cur.fetchone()


async def get_login(conn: Conn, tenant_id: str, username: str) -> dict[str, Any] | None:
    """What a login checks: None when the tenant is unknown or deleted; user fields None when the user is."""
    cur = await conn.execute(
        "SELECT t.tenant_id, u.password_hash, u.role, u.disabled, u.sessions_id FROM tenants t"
        " LEFT JOIN users u ON u.tenant_id = t.tenant_id AND u.username = %s"
        " WHERE t.tenant_id = %s AND t.deleted_at IS NULL",
        [username, tenant_id],
    )
    return await cur.fetchone()


async def list_users(conn: Conn, tenant_id: str, *, after: str | None, limit: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT {USER_COLUMNS} FROM users WHERE tenant_id = %s AND username > %s ORDER BY username LIMIT %s",
        [tenant_id, after or "", limit],
    )
    return await cur.fetchall()


async def update_user(
    conn: Conn,
    tenant_id: str,
    username: str,
    *,
    role: str | None = None,
    groups: Sequence[str] | None = None,
    disabled: bool | None = None,
    password_hash: str | None = None,
    end_sessions: bool = False,
) -> dict[str, Any] | None:
    """Change the given fields; ``end_sessions`` renews the sessions id, so every token issued so far fails."""
    cur = await conn.execute(
        "UPDATE users SET role = coalesce(%s, role), groups = coalesce(%s, groups),"
        " disabled = coalesce(%s, disabled), password_hash = coalesce(%s, password_hash),"
        " sessions_id = CASE WHEN %s THEN gen_random_uuid() ELSE sessions_id END, updated_at = now()"
        f" WHERE tenant_id = %s AND username = %s RETURNING {USER_COLUMNS}",
        [role, None if groups is None else list(groups), disabled, password_hash, end_sessions, tenant_id, username],
    )
    return await cur.fetchone()


async def delete_user(conn: Conn, tenant_id: str, username: str) -> bool:
    cur = await conn.execute(
        "DELETE FROM users WHERE tenant_id = %s AND username = %s RETURNING username", [tenant_id, username]
    )
    return await cur.fetchone() is not None


async def lock_admin_users(conn: Conn, tenant_id: str) -> list[str]:
    """The tenant's enabled admins, locked until the transaction ends: two admins demoting each other at
    once are serialised here, so the second sees the first's change and the last admin stays."""
    cur = await conn.execute(
        "SELECT username FROM users WHERE tenant_id = %s AND role = 'admin' AND NOT disabled"
        " ORDER BY username FOR UPDATE",
        [tenant_id],
    )
    return [row["username"] for row in await cur.fetchall()]


async def lock_admin_keys(conn: Conn, tenant_id: str) -> list[str]:
    """The tenant's live admin API keys, locked like :func:`lock_admin_users`."""
    cur = await conn.execute(
        "SELECT key_id FROM api_keys WHERE tenant_id = %s AND role = 'admin' AND revoked_at IS NULL"
        " ORDER BY key_id FOR UPDATE",
        [tenant_id],
    )
    return [row["key_id"] for row in await cur.fetchall()]


KEY_COLUMNS = "key_id, name, role, created_at"


async def create_api_key(
    conn: Conn, tenant_id: str, key_id: str, name: str, key_hash: str, role: str
) -> dict[str, Any]:
    cur = await conn.execute(
        "INSERT INTO api_keys (tenant_id, key_id, name, key_hash, role) VALUES (%s, %s, %s, %s, %s)"
        f" RETURNING {KEY_COLUMNS}",
        [tenant_id, key_id, name, key_hash, role],
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def list_api_keys(
    conn: Conn, tenant_id: str, *, after: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Live keys, by creation; paged by key id when ``limit`` is given."""
    if limit is None:
        cur = await conn.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = %s AND revoked_at IS NULL ORDER BY created_at",
            [tenant_id],
        )
    else:
        cur = await conn.execute(
            f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = %s AND revoked_at IS NULL AND key_id > %s"
            " ORDER BY key_id LIMIT %s",
            [tenant_id, after or "", limit],
        )
    return await cur.fetchall()


async def get_api_key(conn: Conn, tenant_id: str, key_id: str) -> dict[str, Any] | None:
    """A live key."""
    cur = await conn.execute(
        f"SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = %s AND key_id = %s AND revoked_at IS NULL",
        [tenant_id, key_id],
    )
    return await cur.fetchone()


async def revoke_api_key(conn: Conn, tenant_id: str, key_id: str, by: str) -> dict[str, Any] | None:
    """Revoke a live key; None when there is none of that id."""
    cur = await conn.execute(
        "UPDATE api_keys SET revoked_at = now(), revoked_by = %s"
        f" WHERE tenant_id = %s AND key_id = %s AND revoked_at IS NULL RETURNING {KEY_COLUMNS}",
        [by, tenant_id, key_id],
    )
    return await cur.fetchone()


async def revoke_token(conn: Conn, tenant_id: str, jti: str, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO revoked_tokens (tenant_id, jti, expires_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        [tenant_id, jti, expires_at],
    )


async def authenticate(
    conn: Conn,
    tenant_id: str,
    *,
    kind: str,
    name: str,
    jti: str | None,
    sid: str | None,
    secret_hash: str | None,
    limits: RateLimits,
    known_epoch: int | None = None,
    principal_want: int = 1,
    tenant_want: int = 1,
) -> dict[str, Any]:
    """Check a credential and lease rate-limit tokens, in one round trip (``lily_authenticate_lease``,
    migration 0014): ``status``, the current ``role`` and ``groups``, ``key_name``, ``retry_after``, the
    tenant's auth ``epoch``, and the tokens granted (``principal_granted``, ``tenant_granted``: up to the
    wants, at least one each unless ``limited``; a want of 0 asks nothing of that bucket). With
    ``known_epoch`` (the epoch this process last checked the credential at) still current, the status is
    ``cached`` (or ``limited``) and the lookups are skipped. ``conn`` must not be in a transaction: the
    function sets the tenant for its own implicit one."""
    principal, tenant = limits.per_principal, limits.per_tenant
    cur = await conn.execute(
        "SELECT status, role, groups, key_name, retry_after, epoch, principal_granted, tenant_granted"
        " FROM lily_authenticate_lease(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [
            tenant_id,
            kind,
            name,
            jti,
            sid,
            secret_hash,
            principal.rate,
            principal.capacity,
            principal_want if principal.rate > 0 else 0,
            tenant.rate,
            tenant.capacity,
            tenant_want if tenant.rate > 0 else 0,
            known_epoch,
        ],
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def queue_auth_epoch(conn: Conn, tenant_id: str) -> AsyncCursor[dict[str, Any]]:
    """Queue the read of the tenant's auth epoch (None once the tenant is deleted) in a pipelined
    transaction (``Database.read``): a credential checked at that epoch is still good. Fetch it after."""
    cur = conn.cursor()
    await cur.execute("SELECT auth_epoch FROM tenants WHERE tenant_id = %s AND deleted_at IS NULL", [tenant_id])
    return cur


async def login_attempt(conn: Conn, account: bytes, address: bytes, limits: LoginLimits) -> float:
    """Count a login attempt; 0 when it may go on, else the seconds to wait (``lily_login_attempt``)."""
    cur = await conn.execute(
        "SELECT lily_login_attempt(%s, %s, %s, %s, %s, %s, %s) AS wait",
        [
            account,
            address,
            limits.per_account,
            limits.per_address,
            limits.backoff_base_seconds,
            limits.backoff_max_seconds,
            limits.window_seconds,
        ],
    )
    row = await cur.fetchone()
    return float(row["wait"]) if row else 0.0


async def login_succeeded(conn: Conn, account: bytes, address: bytes, limits: LoginLimits) -> None:
    await conn.execute("SELECT lily_login_succeeded(%s, %s, %s)", [account, address, limits.per_address])
