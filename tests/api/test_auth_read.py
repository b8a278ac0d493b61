"""``GET /metadata/{id}`` checks a cached credential inside its one read (``lily.api.deps.Reading``): a change
made through another API process (its own runtime, caches and leases) still applies to the very next read,
and nothing read as the caller before the change is answered."""

from __future__ import annotations

import time

import httpx
import psycopg
import pytest

from lily.api.app import create_app
from lily.domain.access import Caller
from tests.ops.conftest import database_outage
from tests.pipeline.support import until

from .helpers import assert_problem, count_round_trips, create, deny_viewers_finance


async def _warm(client: httpx.AsyncClient, headers: dict[str, str], path: str) -> httpx.Response:
    """Twice: the first request checks the credential in full and caches it, the second takes the cached path."""
    first = await client.get(path, headers=headers)
    second = await client.get(path, headers=headers)
    assert (first.status_code, first.content) == (second.status_code, second.content)
    return second


async def test_a_cached_read_answers_like_a_checked_one(client, second_process, tenant):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders", description="first")
    path = f"/metadata/{asset['asset_id']}"
    r = await _warm(second_process, tenant.headers("viewer"), path)
    assert r.status_code == 200 and r.json()["description"] == "first" and r.json()["history"]["items"]
    missing = await _warm(second_process, tenant.headers("viewer"), "/metadata/00000000-0000-4000-8000-000000000000")
    assert_problem(missing, 404)


async def test_a_cached_read_is_one_statement(client, second_app, second_process, tenant, monkeypatch):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders", description="first")
    path = f"/metadata/{asset['asset_id']}"
    await _warm(second_process, tenant.headers("viewer"), path)
    checkouts = count_round_trips(second_app.state.runtime.db, monkeypatch)
    r = await second_process.get(path, headers=tenant.headers("viewer"))
    assert r.status_code == 200 and r.json()["description"] == "first", r.text
    # The credential's epoch, the asset and its history: one statement (lily_read_asset).
    assert checkouts == [["BaseCursor._execute_gen"]], checkouts


async def test_a_revoked_key_is_refused_by_the_next_read_in_another_process(client, second_process, tenant):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders")
    path = f"/metadata/{asset['asset_id']}"
    assert (await _warm(second_process, tenant.headers("viewer"), path)).status_code == 200
    key_id = tenant.keys["viewer"].split(".")[1]
    r = await client.delete(f"/tenants/{tenant.tenant_id}/api-keys/{key_id}", headers=tenant.headers("admin"))
    assert r.status_code == 204, r.text
    assert_problem(await second_process.get(path, headers=tenant.headers("viewer")), 401)
    # The tenant's other credentials are checked anew once, and still read.
    assert (await second_process.get(path, headers=tenant.headers("editor"))).status_code == 200


async def test_a_role_change_rereads_as_the_caller_it_made(client, second_process, tenant, database_url):
    """A deny-read policy for viewers: the editor key reads the asset until it becomes a viewer, and the
    very next read — made at first with the old role's settings — answers as the viewer it is now."""
    asset = await create(client, tenant.headers("editor"), "pg://db/s/salaries", tags=["finance"])
    await deny_viewers_finance(client, tenant)
    path = f"/metadata/{asset['asset_id']}"
    assert (await _warm(second_process, tenant.headers("editor"), path)).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET role = 'viewer' WHERE tenant_id = %s AND name = 'editor-key'", [tenant.tenant_id]
        )
    assert_problem(await second_process.get(path, headers=tenant.headers("editor")), 404)


async def test_a_deleted_tenant_is_refused_by_the_next_read(client, second_process, tenant, database_url):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders")
    path = f"/metadata/{asset['asset_id']}"
    assert (await _warm(second_process, tenant.headers("viewer"), path)).status_code == 200
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE tenants SET deleted_at = now() WHERE tenant_id = %s", [tenant.tenant_id])
    assert_problem(await second_process.get(path, headers=tenant.headers("viewer")), 401)


async def test_an_admin_read_past_a_deny_is_still_audited(client, second_process, tenant, app):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/salaries", tags=["finance"])
    policy = {
        "name": "nobody reads finance",
        "effect": "deny",
        "actions": ["read"],
        "principals": ["everyone"],
        "resources": {"tags": ["finance"]},
    }
    assert (
        await client.post("/metadata/access-control", json=policy, headers=tenant.headers("admin"))
    ).status_code == 201
    path = f"/metadata/{asset['asset_id']}"
    assert (await _warm(second_process, tenant.headers("admin"), path)).status_code == 200
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'access.admin_override'")
        assert (await cur.fetchone())["n"] == 2


async def test_reads_take_their_rate_limit_tokens(settings, database_url, tenant, client):
    """The cached read path spends leased tokens like any request: a key's bucket of 2 admits two reads."""
    limited = settings.model_copy(
        update={"rate_limit_per_key": 0.1, "rate_limit_per_tenant": 0.0, "rate_limit_burst_seconds": 20.0}
    )
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders")
    other = create_app(limited, database_url, run_workers=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
            codes = [
                (await c.get(f"/metadata/{asset['asset_id']}", headers=tenant.headers("viewer"))).status_code
                for _ in range(4)
            ]
    assert codes == [200, 200, 429, 429]


async def test_the_read_transaction_is_the_tenants_read_only_and_recovers_from_errors(app, tenant, other_tenant):
    """Database.read, which the cached read path uses: the tenant's and caller's settings, row-level
    security, read-only, and a failing statement or block leaves the pooled connection clean."""
    db = app.state.runtime.db
    caller = Caller("viewer", ("everyone", "role:viewer"))
    async with db.read(tenant.tenant_id, caller) as conn:
        settings = await conn.execute(
            "SELECT current_setting('lily.tenant_id') AS t, current_setting('lily.access_role') AS r,"
            " current_setting('transaction_read_only') AS ro"
        )
        tenants = await conn.execute("SELECT tenant_id FROM tenants ORDER BY tenant_id")
    assert await settings.fetchone() == {"t": tenant.tenant_id, "r": "viewer", "ro": "on"}
    assert [r["tenant_id"] for r in await tenants.fetchall()] == [tenant.tenant_id]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        async with db.read(tenant.tenant_id, caller) as conn:
            await conn.execute("UPDATE tenants SET name = 'x'")
    with pytest.raises(psycopg.errors.UndefinedTable):
        async with db.read(tenant.tenant_id, caller) as conn:
            await conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(RuntimeError):
        async with db.read(tenant.tenant_id, caller) as conn:
            await conn.execute("SELECT 1")
            raise RuntimeError("the block failed")
    # Every connection of the pool is usable again, outside any transaction.
    for _ in range(db.pool.max_size):
        async with db.read(other_tenant.tenant_id, caller) as conn:
            cur = await conn.execute("SELECT current_setting('lily.tenant_id') AS t")
        assert await cur.fetchone() == {"t": other_tenant.tenant_id}
        async with db.connection() as conn:
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_a_cached_read_during_an_outage_is_a_quick_503_and_recovers(client, tenant, pg_admin_url, database_url):
    asset = await create(client, tenant.headers("editor"), "pg://db/s/orders")
    path = f"/metadata/{asset['asset_id']}"
    assert (await _warm(client, tenant.headers("viewer"), path)).status_code == 200
    with database_outage(pg_admin_url, database_url):
        began = time.monotonic()
        r = await client.get(path, headers=tenant.headers("viewer"))
        assert_problem(r, 503, "service-unavailable")
        assert time.monotonic() - began < 2.0

    async def reads() -> httpx.Response | None:
        r = await client.get(path, headers=tenant.headers("viewer"))
        return r if r.status_code == 200 else None

    await until(reads, timeout=15, interval=0.2, what="reads to succeed again")
