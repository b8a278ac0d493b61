"""``lily_append_checked`` (migration 0022): an event is appended only while the tenant's auth and policy
epochs are the ones the caller was checked at; otherwise nothing is appended."""

from __future__ import annotations

from typing import Any

import psycopg

from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.store import log as store_log
from lily.store.db import Database


def event(tenant_id: str, name: str) -> NewEvent:
    return NewEvent(tenant_id, name, ASSET_UPSERT, {"qualified_name": name, "type": "table"}, "key:test")


async def events_named(database_url: str, name: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT count(*) FROM events WHERE subject = %s", [name])
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def epochs(database_url: str, tenant_id: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT t.auth_epoch, coalesce(e.epoch, 0) FROM tenants t"
            " LEFT JOIN access_policy_epochs e USING (tenant_id) WHERE t.tenant_id = %s",
            [tenant_id],
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


async def test_appends_at_the_epochs_it_was_checked_at(db: Database, database_url: str, tenant: Any) -> None:
    auth, policy = await epochs(database_url, tenant.tenant_id)
    async with db.alone(tenant.tenant_id) as conn:
        got = await store_log.append_checked(
            conn, event(tenant.tenant_id, "pg://db/s/a"), 4, auth_epoch=auth, policy_epoch=policy
        )
    assert got is not None and got.seq >= 1
    assert await events_named(database_url, "pg://db/s/a") == 1


async def test_appends_nothing_once_either_epoch_moved(db: Database, database_url: str, tenant: Any) -> None:
    auth, policy = await epochs(database_url, tenant.tenant_id)
    for moved in ({"auth_epoch": auth + 1, "policy_epoch": policy}, {"auth_epoch": auth, "policy_epoch": policy + 1}):
        async with db.alone(tenant.tenant_id) as conn:
            assert await store_log.append_checked(conn, event(tenant.tenant_id, "pg://db/s/b"), 4, **moved) is None
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("UPDATE tenants SET deleted_at = now() WHERE tenant_id = %s", [tenant.tenant_id])
    async with db.alone(tenant.tenant_id) as conn:
        gone = await store_log.append_checked(
            conn, event(tenant.tenant_id, "pg://db/s/b"), 4, auth_epoch=auth, policy_epoch=policy
        )
    assert gone is None
    assert await events_named(database_url, "pg://db/s/b") == 0
