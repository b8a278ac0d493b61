"""Idempotency keys, kept in PostgreSQL so every API process and every restart sees them."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Jsonb

from lily.store.db import Conn


async def claim(
    conn: Conn, tenant_id: str, key: str, request_hash: str, response: dict[str, Any]
) -> dict[str, Any] | None:
    """Record ``key`` for this request; if it was used before, the first use (hash and response).

    A concurrent first use holds the unique index until it commits, so the second caller waits here
    and then sees the winner's row: a key can never produce two events.
    """
    cur = await conn.execute(
        "INSERT INTO idempotency_keys (tenant_id, key, request_hash, response) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (tenant_id, key) DO NOTHING RETURNING key",
        [tenant_id, key, request_hash, Jsonb(response)],
    )
    if await cur.fetchone() is not None:
        return None
    cur = await conn.execute(
        "SELECT request_hash, response FROM idempotency_keys WHERE tenant_id = %s AND key = %s",
        [tenant_id, key],
    )
    return await cur.fetchone()
