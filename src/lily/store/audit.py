"""The audit log in SQL: one row per mutating call, asset or not."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from lily.store.db import Conn, insert_rows


async def write_audit(conn: Conn, tenant_id: str, audits: list[dict[str, Any]]) -> None:
    await insert_rows(
        conn,
        "audit_log",
        (
            "tenant_id",
            "asset_id",
            "action",
            "actor",
            "version_before",
            "version_after",
            "request_id",
            "event_id",
            "detail",
            "at",
        ),
        ("text", "uuid", "text", "text", "int4", "int4", "text", "uuid", "jsonb", "timestamptz"),
        [
            (
                tenant_id,
                a.get("asset_id"),
                a["action"],
                a["actor"],
                a.get("version_before"),
                a.get("version_after"),
                a.get("request_id"),
                a.get("event_id"),
                a.get("detail") or {},
                a["at"],
            )
            for a in audits
        ],
    )


async def audit_trail(
    conn: Conn, tenant_id: str, asset_id: UUID, *, after_id: int | None, limit: int
) -> list[dict[str, Any]]:
    """An asset's audit entries, oldest first, after ``after_id`` when given."""
    cur = await conn.execute(
        "SELECT audit_id, action, actor, version_before, version_after, request_id, event_id, detail, at"
        " FROM audit_log WHERE tenant_id = %s AND asset_id = %s AND audit_id > %s"
        " ORDER BY audit_id LIMIT %s",
        [tenant_id, asset_id, after_id or 0, limit],
    )
    return await cur.fetchall()
