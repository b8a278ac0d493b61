"""Tenants, users, API keys and revoked tokens in SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from lily.store.db import Conn


async def create_tenant(conn: Conn, tenant_id: str, name: str, config: dict[str, Any]) -> bool:
    cur = await conn.execute(
        "INSERT INTO tenants (tenant_id, name, config) VALUES (%s, %s, %s)"
        " ON CONFLICT (tenant_id) DO NOTHING RETURNING tenant_id",
        [tenant_id, name, Jsonb(config)],
    )
    return await cur.fetchone() is not None


async def get_tenant(conn: Conn, tenant_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT tenant_id, name, config, created_at FROM tenants WHERE tenant_id = %s", [tenant_id]
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


async def create_user(conn: Conn, tenant_id: str, username: str, password_hash: str, role: str) -> bool:
    cur = await conn.execute(
        "INSERT INTO users (tenant_id, username, password_hash, role) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, username) DO NOTHING RETURNING username",
        [tenant_id, username, password_hash, role],
    )
    return await cur.fetchone() is not None


async def get_user(conn: Conn, tenant_id: str, username: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT username, user_id, password_hash, role, disabled FROM users WHERE tenant_id = %s AND username = %s",
        [tenant_id, username],
    )
    return await cur.fetchone()


async def create_api_key(conn: Conn, tenant_id: str, key_id: str, name: str, key_hash: str, role: str) -> None:
    await conn.execute(
        "INSERT INTO api_keys (tenant_id, key_id, name, key_hash, role) VALUES (%s, %s, %s, %s, %s)",
        [tenant_id, key_id, name, key_hash, role],
    )


async def authenticate_api_key(conn: Conn, tenant_id: str, key_id: str) -> dict[str, Any] | None:
    """The live key ``key_id`` of ``tenant_id``, in one round trip. ``conn`` must not be in a transaction."""
    cur = await conn.execute("SELECT key_id, name, key_hash, role FROM lily_auth_api_key(%s, %s)", [tenant_id, key_id])
    return await cur.fetchone()


async def list_api_keys(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT key_id, name, role, created_at FROM api_keys WHERE tenant_id = %s AND revoked_at IS NULL"
        " ORDER BY created_at",
        [tenant_id],
    )
    return await cur.fetchall()


async def revoke_token(conn: Conn, tenant_id: str, jti: str, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO revoked_tokens (tenant_id, jti, expires_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
        [tenant_id, jti, expires_at],
    )


async def token_revoked(conn: Conn, tenant_id: str, jti: str) -> bool:
    """Whether token ``jti`` was logged out, in one round trip. ``conn`` must not be in a transaction."""
    cur = await conn.execute("SELECT lily_auth_token_revoked(%s, %s) AS revoked", [tenant_id, jti])
    row = await cur.fetchone()
    return bool(row and row["revoked"])


async def list_connectors(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT connector_id, name, kind, direction, active, created_at FROM connectors"
        " WHERE tenant_id = %s ORDER BY created_at",
        [tenant_id],
    )
    return await cur.fetchall()
