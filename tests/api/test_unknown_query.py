"""A query parameter no route declares is refused with 422 naming it, never silently ignored."""

from __future__ import annotations

import httpx

from tests.conftest import TenantKeys


async def test_a_typo_in_a_filter_is_refused_not_ignored(client: httpx.AsyncClient, tenant: TenantKeys) -> None:
    r = await client.get("/admin/dead-letters", params={"stat": "open"}, headers=tenant.headers("admin"))
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["errors"] == [{"field": "stat", "message": "unknown query parameter", "in": "query"}]


async def test_declared_parameters_still_work(client: httpx.AsyncClient, tenant: TenantKeys) -> None:
    r = await client.get("/admin/dead-letters", params={"state": "open", "limit": 5}, headers=tenant.headers("admin"))
    assert r.status_code == 200, r.text
    assert r.json() == {"items": [], "next_cursor": None}


async def test_odd_names_are_named_safely(client: httpx.AsyncClient, tenant: TenantKeys) -> None:
    r = await client.get("/metadata/search?=true&%0F=null", headers=tenant.headers("viewer"))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["", "\\x0f"]


async def test_a_wrong_method_on_a_fixed_path_stays_405(client: httpx.AsyncClient, tenant: TenantKeys) -> None:
    """/metadata/search taken by PUT /metadata/{asset_id}: the method is the error, whatever the query says."""
    r = await client.put("/metadata/search", params={"q": "x"}, json={}, headers=tenant.headers("admin"))
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "GET"
