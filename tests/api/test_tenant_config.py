"""``PUT /tenants/{id}/config``: admins change their own tenant's settings; nothing else may."""

from __future__ import annotations

from tests.api.helpers import assert_problem


async def test_admin_replaces_config_and_it_is_audited(client, tenant):
    r = await client.get(f"/tenants/{tenant.tenant_id}/config", headers=tenant.headers("viewer"))
    assert r.json()["config"]["propagation"] == {"enabled": True, "max_depth": 10}
    r = await client.put(
        f"/tenants/{tenant.tenant_id}/config",
        json={"propagation": {"enabled": True, "max_depth": 3}},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 200, r.text
    r = await client.get(f"/tenants/{tenant.tenant_id}/config", headers=tenant.headers("viewer"))
    assert r.json()["config"]["propagation"] == {"enabled": True, "max_depth": 3}
    # Left out: back to defaults.
    r = await client.put(f"/tenants/{tenant.tenant_id}/config", json={}, headers=tenant.headers("admin"))
    assert r.json()["config"]["propagation"] == {"enabled": True, "max_depth": 10}


async def test_config_refuses_bad_input_and_non_admins(client, tenant, other_tenant):
    url = f"/tenants/{tenant.tenant_id}/config"
    r = await client.put(url, json={"propagation": {"max_depth": 0}}, headers=tenant.headers("admin"))
    assert_problem(r, 422)
    assert r.json()["errors"][0]["field"] == "propagation.max_depth"
    r = await client.put(url, json={"colour": "red"}, headers=tenant.headers("admin"))
    assert_problem(r, 422)
    r = await client.put(url, json={}, headers=tenant.headers("steward"))
    assert_problem(r, 403)
    # Another tenant's admin: 404, exactly as for a tenant that does not exist.
    theirs = await client.put(url, json={}, headers=other_tenant.headers("admin"))
    nowhere = await client.put("/tenants/no-such-tenant/config", json={}, headers=other_tenant.headers("admin"))
    assert_problem(theirs, 404)
    assert theirs.json()["detail"].replace(tenant.tenant_id, "X") == nowhere.json()["detail"].replace(
        "no-such-tenant", "X"
    )
    r = await client.get(url, headers=tenant.headers("viewer"))
    assert r.json()["config"]["propagation"] == {"enabled": True, "max_depth": 10}
