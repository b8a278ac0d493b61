"""Looking up one event by id (a write's answer, ``GET /events/{id}``) uses the primary key whatever plan
is cached: the generic plan made while ``events`` was small once scanned the tenant's whole slice of
``events_subject`` on every call (migration 0024)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import dict_row

from lily.store import log as store_log
from lily.store.db import APP_ROLE


def _index_scans(database_url: str) -> dict[str, int]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT indexrelname, idx_scan FROM pg_stat_user_indexes WHERE relname = 'events'")
        return {name: scans for name, scans in rows.fetchall()}


@asynccontextmanager
async def _scans_of(database_url: str, conn: Any) -> AsyncIterator[dict[str, int]]:
    """The events indexes' scans made by ``conn`` in the block (its statistics are flushed at the end)."""
    before = _index_scans(database_url)
    delta: dict[str, int] = {}
    yield delta
    await conn.execute("SELECT pg_stat_force_next_flush()")  # flushed as this statement's transaction ends
    after = _index_scans(database_url)
    delta.update({name: after[name] - before.get(name, 0) for name in after})


async def _small_log(client: Any, tenant: Any) -> list[str]:
    """A few applied writes: the log is small, as on a new deployment."""
    ids = []
    for i in range(3):
        answer = await client.post(
            "/metadata",
            json={"qualified_name": f"pg://plans/s.t{i}", "type": "table"},
            headers={**tenant.headers("editor"), "Prefer": "respond-async"},
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["event_id"])
    return ids


@pytest.mark.parametrize("statement", ["outcome", "get_event"])
async def test_an_event_is_found_by_its_primary_key_under_a_generic_plan_made_on_a_small_log(
    client: Any, tenant: Any, other_tenant: Any, database_url: str, statement: str
) -> None:
    ids = await _small_log(client, tenant)
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        await conn.execute(f"SET ROLE {APP_ROLE}")
        # What a long-lived connection ends up with once its plans are cached: a generic plan, made now,
        # while the table is small (three events, never analysed).
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("SELECT set_config('lily.tenant_id', %s, false)", [tenant.tenant_id])
        async with _scans_of(database_url, conn) as scans:
            for event_id in ids:
                if statement == "outcome":
                    found = await store_log.write_outcome(conn, tenant.tenant_id, None, UUID(event_id))
                else:
                    found = await store_log.get_event(conn, tenant.tenant_id, UUID(event_id))
                assert found is not None and found["status"] in ("accepted", "applied")
        assert scans["events_subject"] == 0, scans
        assert scans["events_pkey"] >= len(ids), scans
        # Found by id, the event is still only its tenant's.
        assert await store_log.write_outcome(conn, other_tenant.tenant_id, None, UUID(ids[0])) is None


async def test_get_event_answers_only_the_tenants_own_event(
    app: Any, client: Any, tenant: Any, other_tenant: Any
) -> None:
    (event_id, *_) = await _small_log(client, tenant)
    db = app.state.runtime.db
    async with db.tenant(tenant.tenant_id) as conn:
        mine = await store_log.get_event(conn, tenant.tenant_id, UUID(event_id))
    async with db.tenant(other_tenant.tenant_id) as conn:
        theirs = await store_log.get_event(conn, other_tenant.tenant_id, UUID(event_id))
        unknown = await store_log.get_event(conn, other_tenant.tenant_id, uuid4())
    assert mine is not None and str(mine["event_id"]) == event_id and "tenant_id" not in mine
    assert theirs is None and unknown is None
