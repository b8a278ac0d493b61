"""GET → edit → PUT: the document GET returns is what PUT takes; read-only members must be unchanged."""

from __future__ import annotations

import uuid

from .helpers import assert_problem, create, fields_of, fingerprint


async def test_asset_get_edit_put_round_trip(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, "pg://wh/s.orders", tags=["a"], attributes={"n": 1})
    await client.post(
        "/metadata", json={"qualified_name": "pg://wh/s.orders", "type": "table", "tags": ["b"]}, headers=h
    )
    url = f"/metadata/{asset['asset_id']}"
    document = (await client.get(url, headers=h)).json()
    assert document["version"] == 2 and len(document["history"]["items"]) == 2
    document["description"] = "edited"
    document["tags"] = ["c"]
    r = await client.put(url, json=document, headers=h)
    assert r.status_code == 200, r.text
    after = r.json()
    assert after["version"] == 3 and after["description"] == "edited" and after["tags"] == ["c"]
    assert after["qualified_name"] == "pg://wh/s.orders" and after["attributes"]["n"] == 1


async def test_changed_read_only_members_are_422_naming_them(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, "pg://wh/s.orders")
    url = f"/metadata/{asset['asset_id']}"
    document = (await client.get(url, headers=h)).json()
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    for member, value in [
        ("asset_id", str(uuid.uuid4())),
        ("qualified_name", "pg://wh/s.renamed"),
        ("version", 7),
        ("placeholder", True),
        ("created_at", "2001-01-01T00:00:00+00:00"),
        ("updated_at", "2001-01-01T00:00:00+00:00"),
        ("deleted_at", "2001-01-01T00:00:00+00:00"),
        ("history", {"items": [], "next_cursor": None}),
    ]:
        r = await client.put(url, json={**document, member: value}, headers=h)
        problem = assert_problem(r, 422, "validation")
        assert fields_of(problem) == {member}, (member, problem)
    # Several at once are all named; unknown members are still refused.
    r = await client.put(url, json={**document, "version": 9, "asset_id": str(uuid.uuid4())}, headers=h)
    assert fields_of(assert_problem(r, 422)) == {"version", "asset_id"}
    r = await client.put(url, json={**document, "colour": "red"}, headers=h)
    assert fields_of(assert_problem(r, 422)) == {"colour"}
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before


async def test_a_stale_version_in_the_body_is_refused(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, "pg://wh/s.orders")
    url = f"/metadata/{asset['asset_id']}"
    stale = (await client.get(url, headers=h)).json()
    await client.put(url, json={"type": "table", "description": "someone else"}, headers=h)
    stale["description"] = "mine"
    problem = assert_problem(await client.put(url, json=stale, headers=h), 422)
    assert "version" in fields_of(problem)
    assert (await client.get(url, headers=h)).json()["description"] == "someone else"


async def test_tenant_config_get_edit_put_round_trip(client, tenant):
    url = f"/tenants/{tenant.tenant_id}/config"
    h = tenant.headers("admin")
    document = (await client.get(url, headers=h)).json()
    document["config"]["propagation"]["max_depth"] = 4
    r = await client.put(url, json=document, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["config"]["propagation"] == {"enabled": True, "max_depth": 4}
    assert (await client.get(url, headers=h)).json() == r.json()
    # The bare configuration is still accepted.
    r = await client.put(url, json={"propagation": {"max_depth": 5}}, headers=h)
    assert r.json()["config"]["propagation"]["max_depth"] == 5


async def test_tenant_config_read_only_members_are_422(client, tenant):
    url = f"/tenants/{tenant.tenant_id}/config"
    h = tenant.headers("admin")
    document = (await client.get(url, headers=h)).json()
    for member, value in [("tenant_id", "globex"), ("name", "Other"), ("created_at", "2001-01-01T00:00:00Z")]:
        problem = assert_problem(await client.put(url, json={**document, member: value}, headers=h), 422)
        assert fields_of(problem) == {member}
    both = {**document, "propagation": {"max_depth": 2}}
    assert_problem(await client.put(url, json=both, headers=h), 422)
    assert fields_of(assert_problem(await client.put(url, json={**document, "colour": 1}, headers=h), 422)) == {
        "colour"
    }
    assert (await client.get(url, headers=h)).json() == document
