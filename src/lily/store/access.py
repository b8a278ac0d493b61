"""Access policies in SQL: the policy rows, and the lookups the API's write checks need.

Reads of assets need nothing here: row-level security (migration 0008) hides what the transaction's
caller may not read. Nothing here commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg import AsyncCursor

from lily.domain.access import PolicyIn
from lily.domain.errors import Conflict
from lily.store.db import Conn

_COLUMNS = (
    "policy_id, name, description, effect, actions, principals, except_principals, asset_ids,"
    " qualified_name_prefix, types, tags, classifications, version, created_by, created_at, updated_by, updated_at"
)


def _values(body: PolicyIn) -> dict[str, Any]:
    r = body.resources
    return {
        "name": body.name,
        "description": body.description,
        "effect": body.effect,
        "actions": list(body.actions),
        "principals": list(body.principals),
        "except": list(body.except_),
        "asset_ids": r.asset_ids,
        "prefix": r.qualified_name_prefix,
        "types": r.types,
        "tags": r.tags,
        "classifications": r.classifications,
    }


def _duplicate(name: str) -> Conflict:
    return Conflict(f"a policy named {name[:80]!r} already exists", field="name")


async def count(conn: Conn, tenant_id: str) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM access_policies WHERE tenant_id = %s", [tenant_id])
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def lock_tenant(conn: Conn, tenant_id: str) -> None:
    """Serialise policy creation per tenant, so the count bound holds under concurrent requests."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('access_policies ' || %s, 0))", [tenant_id])


async def create(conn: Conn, tenant_id: str, body: PolicyIn, actor: str) -> dict[str, Any]:
    try:
        cur = await conn.execute(
            "INSERT INTO access_policies (tenant_id, name, description, effect, actions, principals,"
            " except_principals, asset_ids, qualified_name_prefix, types, tags, classifications, created_by,"
            " updated_by) VALUES (%(tenant)s, %(name)s, %(description)s, %(effect)s, %(actions)s, %(principals)s,"
            " %(except)s, %(asset_ids)s, %(prefix)s, %(types)s, %(tags)s, %(classifications)s, %(actor)s, %(actor)s)"
            f" RETURNING {_COLUMNS}",
            {"tenant": tenant_id, "actor": actor, **_values(body)},
        )
    except psycopg.errors.UniqueViolation as exc:
        raise _duplicate(body.name) from exc
    row = await cur.fetchone()
    assert row is not None
    return row


async def get(conn: Conn, tenant_id: str, policy_id: UUID, *, for_update: bool = False) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM access_policies WHERE tenant_id = %s AND policy_id = %s"
        + (" FOR UPDATE" if for_update else ""),
        [tenant_id, policy_id],
    )
    return await cur.fetchone()


async def replace(conn: Conn, tenant_id: str, policy_id: UUID, body: PolicyIn, actor: str) -> dict[str, Any] | None:
    try:
        cur = await conn.execute(
            "UPDATE access_policies SET name = %(name)s, description = %(description)s, effect = %(effect)s,"
            " actions = %(actions)s, principals = %(principals)s, except_principals = %(except)s,"
            " asset_ids = %(asset_ids)s, qualified_name_prefix = %(prefix)s, types = %(types)s, tags = %(tags)s,"
            " classifications = %(classifications)s, version = version + 1, updated_by = %(actor)s,"
            " updated_at = now() WHERE tenant_id = %(tenant)s AND policy_id = %(policy_id)s"
            f" RETURNING {_COLUMNS}",
            {"tenant": tenant_id, "policy_id": policy_id, "actor": actor, **_values(body)},
        )
    except psycopg.errors.UniqueViolation as exc:
        raise _duplicate(body.name) from exc
    return await cur.fetchone()


async def delete(conn: Conn, tenant_id: str, policy_id: UUID) -> dict[str, Any] | None:
    cur = await conn.execute(
        f"DELETE FROM access_policies WHERE tenant_id = %s AND policy_id = %s RETURNING {_COLUMNS}",
        [tenant_id, policy_id],
    )
    return await cur.fetchone()


async def page(conn: Conn, tenant_id: str, *, after: UUID | None, limit: int) -> list[dict[str, Any]]:
    """Policies by id, ``limit`` of them, after ``after`` when given."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM access_policies WHERE tenant_id = %s AND policy_id > %s ORDER BY policy_id LIMIT %s",
        [tenant_id, after or UUID(int=0), limit],
    )
    return await cur.fetchall()


async def all_policies(conn: Conn, tenant_id: str) -> list[dict[str, Any]]:
    """Every policy of the tenant (bounded by ``MAX_POLICIES``), for deciding in the API."""
    return await (await queue_all_policies(conn, tenant_id)).fetchall()


async def queue_all_policies(conn: Conn, tenant_id: str) -> AsyncCursor[dict[str, Any]]:
    """:func:`all_policies`, sent but not fetched (for :meth:`Database.read`: fetch after its block)."""
    return await conn.execute(
        f"SELECT {_COLUMNS} FROM access_policies WHERE tenant_id = %s ORDER BY policy_id", [tenant_id]
    )


async def queue_policy_epoch(conn: Conn, tenant_id: str) -> AsyncCursor[dict[str, Any]]:
    """Queue the read of the tenant's policy epoch (0 for a tenant that never had a policy: migration 0015
    writes the row on the first change), to fetch after the :meth:`Database.read` block."""
    return await conn.execute(
        "SELECT coalesce((SELECT epoch FROM access_policy_epochs WHERE tenant_id = %s), 0) AS epoch", [tenant_id]
    )


async def hidden_names(conn: Conn, qualified_names: Sequence[str]) -> set[str]:
    """Which of these names are assets of the transaction's tenant that its caller may not read (the
    database's read rule, applied by a function that can see them)."""
    if not qualified_names:
        return set()
    cur = await conn.execute("SELECT lily_hidden_names(%s::text[]) AS name", [list(qualified_names)])
    return {row["name"] for row in await cur.fetchall()}


async def user_access(conn: Conn, tenant_id: str, username: str) -> dict[str, Any] | None:
    """A user's role and groups, for deciding on its behalf."""
    cur = await conn.execute(
        "SELECT role, groups FROM users WHERE tenant_id = %s AND username = %s", [tenant_id, username]
    )
    return await cur.fetchone()


async def key_access(conn: Conn, tenant_id: str, name: str) -> dict[str, Any] | None:
    """The role of a live API key with this name (the highest, if several share it)."""
    cur = await conn.execute(
        "SELECT role FROM api_keys WHERE tenant_id = %s AND name = %s AND revoked_at IS NULL"
        " ORDER BY CASE role WHEN 'admin' THEN 0 WHEN 'steward' THEN 1 WHEN 'editor' THEN 2 ELSE 3 END LIMIT 1",
        [tenant_id, name],
    )
    return await cur.fetchone()
