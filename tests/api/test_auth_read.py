"""``GET /metadata/{id}`` checks a cached credential inside its one read (``lily.api.deps.Reading``): a change
made through another API process (its own runtime, caches and leases) still applies to the very next read,
and nothing read as the caller before the change is answered."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest

from lily.api.app import create_app
from lily.config import Settings

from .helpers import assert_problem, create


@pytest.fixture
async def second_process(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process on the same database: its own pool and runtime, nothing shared in memory."""
    other = create_app(settings, database_url, run_workers=False)
    async with other.router.lifespan_context(other):
        transport = httpx.ASGITransport(app=other)
        async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as c:
            yield c


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
    policy = {
        "name": "no finance for viewers",
        "effect": "deny",
        "actions": ["read"],
        "principals": ["role:viewer"],
        "resources": {"tags": ["finance"]},
    }
    r = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
    assert r.status_code == 201, r.text
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
