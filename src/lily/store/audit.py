"""The audit log in SQL: one row per mutating call, asset or not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from lily.domain.audit import AuditEntry
from lily.store.db import Conn, insert_rows


def _row(tenant_id: str, a: AuditEntry | Mapping[str, Any]) -> tuple[Any, ...]:
    if isinstance(a, AuditEntry):
        return (tenant_id, a.asset_id, a.action, a.actor, a.version_before, a.version_after, a.request_id,
                a.event_id, a.detail or {}, a.at)  # fmt: skip
    return (tenant_id, a.get("asset_id"), a["action"], a["actor"], a.get("version_before"), a.get("version_after"),
            a.get("request_id"), a.get("event_id"), a.get("detail") or {}, a["at"])  # fmt: skip


async def write_audit(conn: Conn, tenant_id: str, entries: Sequence[AuditEntry | Mapping[str, Any]]) -> None:
    """Append entries (:class:`AuditEntry`, or mappings of its fields) to the tenant's audit log."""
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
        [_row(tenant_id, a) for a in entries],
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
