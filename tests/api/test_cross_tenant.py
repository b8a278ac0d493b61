"""Another tenant's ids answer exactly like ids that do not exist, on every endpoint, and change nothing."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from .helpers import assert_problem, create, fingerprint

QN = "pg://wh/s.secret_salaries"


def scrubbed(r: httpx.Response, *ids: str) -> tuple[int, str, dict[str, Any]]:
    """Status, content type and body of a response, with the ids it names blanked out."""
    text = r.text
    for i in ids:
        text = text.replace(i, "<id>")
    return r.status_code, r.headers["content-type"], httpx.Response(200, content=text).json()


async def theirs(client: Any, other_tenant: Any) -> dict[str, Any]:
    """An asset of the other tenant, with a few versions, a deleted sibling and an event id."""
    h = other_tenant.headers("admin")
    asset = await create(client, h, QN, description="top secret", tags=["pii"])
    await create(client, h, QN, description="still secret", tags=["pii"])
    deleted = await create(client, h, QN + "_old")
    assert (await client.delete(f"/metadata/{deleted['asset_id']}", headers=h)).status_code == 200
    r = await client.post(
        "/metadata", json={"qualified_name": QN + "_async", "type": "table"}, headers={**h, "Prefer": "respond-async"}
    )
    assert r.status_code == 202, r.text
    # Events of one subject apply in order, so once this waiting write answers the async one is applied.
    assert (
        await client.post("/metadata", json={"qualified_name": QN + "_async", "type": "table"}, headers=h)
    ).status_code == 200
    return {"asset": asset, "deleted": deleted, "event_id": r.json()["event_id"]}


async def test_every_endpoint_answers_404_as_for_an_unknown_id(client, app, tenant, other_tenant):
    data = await theirs(client, other_tenant)
    their_id, their_deleted, their_event = data["asset"]["asset_id"], data["deleted"]["asset_id"], data["event_id"]
    assert (await client.get(f"/events/{their_event}", headers=other_tenant.headers("viewer"))).status_code == 200
    their_etag = f'"{their_id}:2"'
    mine = await create(client, tenant.headers("editor"), "pg://wh/s.mine")
    db = app.state.runtime.db
    before_theirs = await fingerprint(db, other_tenant.tenant_id)
    before_mine = await fingerprint(db, tenant.tenant_id)

    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/metadata/{id}", {}),
        ("GET", "/metadata/{id}?include_deleted=true", {}),
        ("GET", "/metadata/{id}?history_limit=1", {}),
        ("PUT", "/metadata/{id}", {"json": {"type": "view", "description": "pwned"}}),
        ("PUT", "/metadata/{id}", {"json": {"type": "view"}, "headers": {"If-Match": "*"}}),
        ("PUT", "/metadata/{id}", {"json": {"type": "view"}, "headers": {"If-Match": '"{id}:2"'}}),
        ("PUT", "/metadata/{id}", {"json": {"type": "view"}, "headers": {"If-Match": '"{id}:1"'}}),
        ("DELETE", "/metadata/{id}", {}),
        ("DELETE", "/metadata/{id}", {"headers": {"If-Match": '"{id}:2"'}}),
        ("GET", "/metadata/audit/{id}", {}),
        ("GET", "/metadata/audit/{id}?limit=1", {}),
    ]
    for role in ("viewer", "editor", "admin"):
        h = tenant.headers(role)
        for their in (their_id, their_deleted):
            for method, template, extra in requests:
                if method != "GET" and role == "viewer":
                    continue
                unknown = str(uuid.uuid4())
                answers = []
                for target in (their, unknown):
                    headers = {**h, **{k: v.replace("{id}", target) for k, v in extra.get("headers", {}).items()}}
                    r = await client.request(
                        method, template.replace("{id}", target), headers=headers, json=extra.get("json")
                    )
                    assert_problem(r, 404, "not-found")
                    assert "secret" not in r.text
                    answers.append(scrubbed(r, target))
                assert answers[0] == answers[1], (method, template, answers)
        # The event status of another tenant's write.
        unknown_event = str(uuid.uuid4())
        a = await client.get(f"/events/{their_event}", headers=h)
        b = await client.get(f"/events/{unknown_event}", headers=h)
        assert_problem(a, 404)
        assert scrubbed(a, their_event) == scrubbed(b, unknown_event)
        # Another tenant's config and sources answer like a tenant that does not exist.
        for what in ("config", "sources"):
            a = await client.get(f"/tenants/{other_tenant.tenant_id}/{what}", headers=h)
            b = await client.get(f"/tenants/no-such-tenant/{what}", headers=h)
            assert_problem(a, 404)
            assert scrubbed(a, other_tenant.tenant_id) == scrubbed(b, "no-such-tenant")
            assert (await client.get(f"/tenants/{tenant.tenant_id}/{what}", headers=h)).status_code == 200

    # Their ETag on my asset is stale (it names another asset), never a way in.
    r = await client.put(
        f"/metadata/{mine['asset_id']}",
        json={"type": "view"},
        headers={**tenant.headers("editor"), "If-Match": their_etag},
    )
    assert_problem(r, 412)
    assert await fingerprint(db, other_tenant.tenant_id) == before_theirs
    assert await fingerprint(db, tenant.tenant_id) == before_mine
    r = await client.get(f"/metadata/{their_id}", headers=other_tenant.headers("viewer"))
    assert r.json()["description"] == "still secret" and r.json()["version"] == 2

    # Search never returns their assets, whatever the filter.
    for params in [
        {},
        {"q": "secret"},
        {"q": "salaries"},
        {"qualified_name": QN},
        {"tag": "pii"},
        {"type": "table"},
        {"limit": 1},
    ]:
        r = await client.get("/metadata/search", params=params, headers=tenant.headers("viewer"))
        assert r.status_code == 200
        found = [a["qualified_name"] for a in r.json()["items"]]
        assert all("salaries" not in n for n in found), (params, found)


async def test_the_same_qualified_name_in_two_tenants_is_two_assets(client, app, tenant, other_tenant):
    data = await theirs(client, other_tenant)
    before = await fingerprint(app.state.runtime.db, other_tenant.tenant_id)
    r = await client.post(
        "/metadata",
        json={"qualified_name": QN, "type": "view", "description": "mine"},
        headers=tenant.headers("editor"),
    )
    assert r.status_code == 201, r.text  # created here, not an update of theirs
    mine = r.json()
    assert mine["asset_id"] != data["asset"]["asset_id"] and mine["version"] == 1
    assert await fingerprint(app.state.runtime.db, other_tenant.tenant_id) == before
    # A cursor from one tenant's listing leaks nothing in the other's.
    r = await client.get("/metadata/search", params={"limit": 1}, headers=other_tenant.headers("viewer"))
    cursor = r.json()["next_cursor"]
    assert cursor
    r = await client.get("/metadata/search", params={"limit": 1, "cursor": cursor}, headers=tenant.headers("viewer"))
    assert r.status_code == 200
    assert all(a["asset_id"] == mine["asset_id"] for a in r.json()["items"])


async def test_tenant_config_and_sources_of_ones_own_tenant(client, tenant):
    r = await client.get(f"/tenants/{tenant.tenant_id}/config", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == tenant.tenant_id and body["name"] == tenant.tenant_id
    assert isinstance(body["config"], dict) and body["created_at"]
    r = await client.get(f"/tenants/{tenant.tenant_id}/sources", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tenant_id"] == tenant.tenant_id and body["outbound"] == []
    keys = [s for s in body["inbound"] if s["kind"] == "api_key"]
    assert sorted(k["role"] for k in keys) == ["admin", "editor", "steward", "viewer"]
    assert all("key_hash" not in k and "secret" not in k for k in keys)
    assert {k["id"] for k in keys} == {key.split(".")[1] for key in tenant.keys.values()}
    assert not any(tenant.keys[role].split(".")[2] in r.text for role in tenant.keys)
