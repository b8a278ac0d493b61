"""``/system``: health needs no credentials; metrics need an admin (or the operator). The OpenAPI document
lists the API."""

from __future__ import annotations

from .helpers import assert_problem


async def test_health_metrics_and_openapi(client, tenant):
    r = await client.get("/system/health")
    assert r.status_code == 200, r.text
    # The public probe says up or down and nothing else (details: tests/ops/test_health.py).
    assert r.json() == {"status": "ok"}
    # Credentials, good or bad, make no difference to a probe.
    assert (await client.get("/system/health", headers={"Authorization": "Bearer junk"})).status_code == 200

    # Metrics need an admin.
    assert_problem(await client.get("/system/metrics"), 401)
    assert_problem(await client.get("/system/metrics", headers=tenant.headers("steward")), 403)
    r = await client.get("/system/metrics", headers=tenant.headers("admin"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")

    # The OpenAPI document lists every endpoint of the core.
    r = await client.get("http://lily.test/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path, methods in {
        "/lily/v1/auth/login": {"post"},
        "/lily/v1/auth/validate": {"get"},
        "/lily/v1/auth/logout": {"post"},
        "/lily/v1/system/health": {"get"},
        "/lily/v1/system/health/details": {"get"},
        "/lily/v1/tenants/{tenant_id}/config": {"get"},
        "/lily/v1/tenants/{tenant_id}/sources": {"get"},
        "/lily/v1/metadata": {"post"},
        "/lily/v1/metadata/{asset_id}": {"get", "put", "delete"},
        "/lily/v1/metadata/search": {"get"},
        "/lily/v1/metadata/audit/{asset_id}": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
