"""``lily_read_asset`` (migration 0023), the point read in one statement: it answers what the asset's read
and its history's read answer, as the caller, and never a history the caller may not see."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
import pytest

from lily.domain.access import Caller
from lily.domain.assets import ASSET_FIELDS
from lily.store import assets as store
from lily.store.db import APP_ROLE, Database
from tests.api.helpers import deny_viewers_finance

VIEWER = Caller("viewer", ("everyone", "role:viewer"))
EDITOR = Caller("editor", ("everyone", "role:editor"))


async def _asset(client: Any, tenant: Any, name: str, versions: int = 1, **fields: Any) -> UUID:
    for i in range(versions):
        body = {"qualified_name": name, "type": "table", "description": f"v{i + 1}", **fields}
        answer = await client.post("/metadata", json=body, headers=tenant.headers("editor"))
        assert answer.status_code in (200, 201), answer.text
    return UUID(answer.json()["asset_id"])


async def _read(db: Database, tenant_id: str, caller: Caller | None, asset_id: UUID, **kw: Any) -> Any:
    kw = {"include_deleted": False, "before_version": None, "limit": 20, **kw}
    async with db.alone(tenant_id) as conn:
        return await store.read_with_history(conn, tenant_id, caller, asset_id, **kw)


def test_its_columns_are_the_asset_fields_and_a_versions(database_url: str) -> None:
    """A new asset field needs a new version of the function: this is what says so."""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        cur = conn.execute("SELECT * FROM lily_read_asset('nobody', NULL, NULL, gen_random_uuid(), 1, 1)")
        names = [c.name for c in cur.description or ()]
    assert names[0] == "auth_epoch"
    assert tuple(names[1 : 1 + len(ASSET_FIELDS)]) == ASSET_FIELDS
    assert tuple(n.removeprefix("h_") for n in names[1 + len(ASSET_FIELDS) :]) == store._HISTORY_FIELDS


async def test_it_answers_what_the_two_reads_answer(app: Any, client: Any, tenant: Any) -> None:
    db = app.state.runtime.db
    asset_id = await _asset(client, tenant, "pg://db/s/orders", versions=3, tags=["a"], owners=["ann"])
    async with db.tenant(tenant.tenant_id, EDITOR) as conn:
        auth = await (await conn.execute("SELECT auth_epoch FROM tenants")).fetchone()
        expected = await store.get(conn, tenant.tenant_id, asset_id)
        newest = await store.history(conn, tenant.tenant_id, asset_id, before_version=None, limit=2)
        older = await store.history(conn, tenant.tenant_id, asset_id, before_version=2, limit=2)
    assert expected is not None and expected.version == 3 and [v["version"] for v in newest] == [3, 2]
    epoch, (asset, history) = await _read(db, tenant.tenant_id, EDITOR, asset_id, limit=2)
    assert auth is not None and epoch == auth["auth_epoch"]
    assert asset == expected
    assert history == newest  # every field, with its type: uuids, timestamps, jsonb
    assert (await _read(db, tenant.tenant_id, EDITOR, asset_id, before_version=2, limit=2))[1][1] == older


async def test_a_hidden_asset_comes_back_with_no_history(app: Any, client: Any, tenant: Any) -> None:
    asset_id = await _asset(client, tenant, "pg://db/s/salaries", versions=2, tags=["finance"])
    await deny_viewers_finance(client, tenant)
    db = app.state.runtime.db
    epoch, (asset, history) = await _read(db, tenant.tenant_id, VIEWER, asset_id)
    assert epoch is not None and (asset, history) == (None, [])
    _, (seen, versions) = await _read(db, tenant.tenant_id, EDITOR, asset_id)
    assert seen is not None and [v["version"] for v in versions] == [2, 1]


async def test_another_tenants_asset_is_not_there(app: Any, client: Any, tenant: Any, other_tenant: Any) -> None:
    theirs = await _asset(client, other_tenant, "pg://db/s/theirs", versions=2)
    db = app.state.runtime.db
    epoch, (asset, history) = await _read(db, tenant.tenant_id, EDITOR, theirs)
    assert epoch is not None and (asset, history) == (None, [])
    assert (await _read(db, other_tenant.tenant_id, EDITOR, theirs))[1][0] is not None


async def test_a_deleted_tenant_has_no_epoch(app: Any, client: Any, tenant: Any, database_url: str) -> None:
    asset_id = await _asset(client, tenant, "pg://db/s/orders")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET deleted_at = now() WHERE tenant_id = %s", [tenant.tenant_id])
    epoch, _ = await _read(app.state.runtime.db, tenant.tenant_id, EDITOR, asset_id)
    assert epoch is None


async def test_it_reads_and_never_writes(database_url: str) -> None:
    """Run in a transaction of the caller's, the function leaves it read-only: a later write fails."""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"SET ROLE {APP_ROLE}")
        conn.execute("SELECT * FROM lily_read_asset('nobody', NULL, NULL, gen_random_uuid(), 1, 1)")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE scratch (x int)")
