"""``/metadata``: create, upsert, history paging, If-Match, soft delete, audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .helpers import assert_problem, create, fingerprint

QN = "pg://warehouse/public.orders"
STAMP = {"lily.source": "api"}  # the built-in source_stamp hook marks what wrote an asset


def key_id(tenant: Any, role: str) -> str:
    return str(tenant.keys[role].split(".")[1])


async def test_create_returns_201_with_the_full_asset(client, tenant):
    r = await client.post(
        "/metadata",
        headers=tenant.headers("editor"),
        json={
            "qualified_name": QN,
            "type": "Table",
            "description": "all orders",
            "owners": ["ann", "ann", "bo"],
            "tags": ["pii"],
            "attributes": {"rows": 10, "nested": {"a": [1, 2]}},
        },
    )
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["qualified_name"] == QN and a["type"] == "table" and a["name"] == "orders"
    assert a["description"] == "all orders" and a["owners"] == ["ann", "bo"] and a["tags"] == ["pii"]
    assert a["attributes"] == {"rows": 10, "nested": {"a": [1, 2]}, **STAMP}
    assert a["version"] == 1 and a["deleted_at"] is None
    assert datetime.fromisoformat(a["created_at"]) == datetime.fromisoformat(a["updated_at"])
    assert r.headers["etag"] == f'"{a["asset_id"]}:1"'
    assert r.headers["location"] == f"/lily/v1/metadata/{a['asset_id']}"

    r = await client.get(f"/metadata/{a['asset_id']}", headers=tenant.headers("viewer"))
    assert r.status_code == 200
    got = r.json()
    assert {k: got[k] for k in a} == a
    assert r.headers["etag"] == f'"{a["asset_id"]}:1"'
    (v1,) = got["history"]["items"]
    assert got["history"]["next_cursor"] is None
    assert v1["version"] == 1 and v1["action"] == "asset.created" and v1["snapshot"] == a
    assert v1["actor"] == f"key:{key_id(tenant, 'editor')}"
    assert v1["changes"]["tags"] == {"from": None, "to": ["pii"]}


async def test_upsert_by_qualified_name_makes_version_2(client, app, tenant):
    h = tenant.headers("editor")
    first = await create(client, h, QN, description="v1", tags=["a"])
    r = await client.post("/metadata", json={"qualified_name": QN, "type": "table", "description": "v2"}, headers=h)
    assert r.status_code == 200, r.text
    second = r.json()
    assert second["asset_id"] == first["asset_id"] and second["version"] == 2
    assert second["description"] == "v2" and second["tags"] == ["a"]  # an upsert keeps fields it was not sent
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]
    assert r.headers["etag"] == f'"{first["asset_id"]}:2"'

    # The same write again changes nothing: 200 with the current version, and no new version or audit entry.
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    r = await client.post("/metadata", json={"qualified_name": QN, "type": "table", "description": "v2"}, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 2
    after = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    assert after["versions"] == before["versions"] and after["audit"] == before["audit"]
    assert after["assets"] == before["assets"]

    r = await client.get(f"/metadata/{first['asset_id']}", headers=h)
    history = r.json()["history"]["items"]
    assert [v["version"] for v in history] == [2, 1]
    assert history[0]["action"] == "asset.updated"
    assert history[0]["changes"] == {"description": {"from": "v1", "to": "v2"}}
    assert history[1]["snapshot"]["description"] == "v1"


async def test_history_pages_newest_first(client, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, QN, attributes={"n": 0})
    for n in range(1, 25):
        r = await client.post(
            "/metadata", json={"qualified_name": QN, "type": "table", "attributes": {"n": n}}, headers=h
        )
        assert r.status_code == 200 and r.json()["version"] == n + 1
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"history_limit": 10}
        if cursor:
            params["history_cursor"] = cursor
        r = await client.get(f"/metadata/{asset['asset_id']}", params=params, headers=tenant.headers("viewer"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["version"] == 25  # the asset itself is always the current version
        items = body["history"]["items"]
        assert len(items) == (10 if pages < 2 else 5)
        for v in items:
            assert v["snapshot"]["attributes"] == {"n": v["version"] - 1, **STAMP}
        seen += [v["version"] for v in items]
        pages += 1
        cursor = body["history"]["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == list(range(25, 0, -1))
    # The default page is the newest 20.
    r = await client.get(f"/metadata/{asset['asset_id']}", headers=h)
    assert [v["version"] for v in r.json()["history"]["items"]] == list(range(25, 5, -1))


async def test_put_replaces_mutable_fields_with_if_match(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, QN, description="d", owners=["ann"], tags=["x"], attributes={"k": 1})
    url = f"/metadata/{asset['asset_id']}"
    etag = (await client.get(url, headers=h)).headers["etag"]
    r = await client.put(url, json={"type": "view", "tags": ["y"]}, headers={**h, "If-Match": etag})
    assert r.status_code == 200, r.text
    put = r.json()
    assert put["version"] == 2 and put["type"] == "view" and put["tags"] == ["y"]
    # Replace: every field not sent returns to its default; the identity never changes.
    assert put["description"] is None and put["owners"] == [] and put["attributes"] == STAMP
    assert put["name"] == "orders" and put["qualified_name"] == QN and put["asset_id"] == asset["asset_id"]
    assert r.headers["etag"] == f'"{asset["asset_id"]}:2"'
    history = (await client.get(url, headers=h)).json()["history"]["items"]
    assert history[0]["action"] == "asset.replaced" and history[0]["version"] == 2

    # A second editor still holding the first ETag is refused, and nothing changes.
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    r = await client.put(
        url, json={"type": "table", "description": "clobber"}, headers={**tenant.headers("admin"), "If-Match": etag}
    )
    problem = assert_problem(r, 412, "precondition-failed")
    assert problem["current_version"] == 2
    for bad in (f'"{asset["asset_id"]}:99"', '"00000000-0000-0000-0000-000000000000:2"', "garbage", '""'):
        assert_problem(await client.put(url, json={"type": "table"}, headers={**h, "If-Match": bad}), 412)
    assert_problem(await client.delete(url, headers={**h, "If-Match": etag}), 412)
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before
    assert (await client.get(url, headers=h)).json()["description"] is None

    # The current ETag (weak form too), "*", and no If-Match at all are all accepted.
    weak = f'W/"{asset["asset_id"]}:2"'
    r = await client.put(url, json={"type": "table", "description": "d3"}, headers={**h, "If-Match": weak})
    assert r.status_code == 200 and r.json()["version"] == 3
    r = await client.put(url, json={"type": "table", "description": "d4"}, headers={**h, "If-Match": "*"})
    assert r.status_code == 200 and r.json()["version"] == 4
    r = await client.put(url, json={"type": "table", "description": "d5"}, headers=h)
    assert r.status_code == 200 and r.json()["version"] == 5


async def test_delete_is_soft(client, app, tenant):
    h = tenant.headers("editor")
    asset = await create(client, h, QN, tags=["t"])
    url = f"/metadata/{asset['asset_id']}"
    r = await client.delete(url, headers={**h, "X-Request-ID": "req-delete-1"})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["deleted_at"] is not None

    assert_problem(await client.get(url, headers=h), 404, "not-found")
    r = await client.get(url, params={"include_deleted": "true"}, headers=h)
    assert r.status_code == 200
    body = r.json()
    assert body["deleted_at"] is not None and body["version"] == 2 and body["tags"] == ["t"]
    assert [(v["version"], v["action"]) for v in body["history"]["items"]] == [
        (2, "asset.deleted"),
        (1, "asset.created"),
    ]
    audit = (await client.get(f"/metadata/audit/{asset['asset_id']}", headers=h)).json()["items"]
    assert [(a["action"], a["version_before"], a["version_after"]) for a in audit] == [
        ("asset.created", None, 1),
        ("asset.deleted", 1, 2),
    ]
    assert audit[1]["request_id"] == "req-delete-1"

    # A deleted asset is gone for every other call, and leaves search.
    before = await fingerprint(app.state.runtime.db, tenant.tenant_id)
    assert_problem(await client.put(url, json={"type": "table"}, headers=h), 404)
    assert_problem(await client.delete(url, headers=h), 404)
    r = await client.get("/metadata/search", params={"qualified_name": QN}, headers=h)
    assert r.json()["items"] == []
    assert await fingerprint(app.state.runtime.db, tenant.tenant_id) == before

    # Writing the qualified name again restores it under the same id, as a new version.
    r = await client.post("/metadata", json={"qualified_name": QN, "type": "table"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["asset_id"] == asset["asset_id"] and r.json()["version"] == 3 and r.json()["deleted_at"] is None
    assert r.json()["tags"] == []
    history = (await client.get(url, headers=h)).json()["history"]["items"]
    assert history[0]["action"] == "asset.restored"


async def test_audit_trail_records_every_change(client, tenant):
    editor, admin = tenant.headers("editor"), tenant.headers("admin")
    asset = await create(client, {**editor, "X-Request-ID": "r-1"}, QN)
    url = f"/metadata/{asset['asset_id']}"
    await create(client, {**admin, "X-Request-ID": "r-2"}, QN, description="two")
    assert (await client.put(url, json={"type": "view"}, headers={**editor, "X-Request-ID": "r-3"})).status_code == 200
    assert (await client.delete(url, headers={**admin, "X-Request-ID": "r-4"})).status_code == 200
    r = await client.post("/metadata", json={"qualified_name": QN, "type": "table"}, headers=editor)
    assert r.status_code == 200

    entries: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await client.get(f"/metadata/audit/{asset['asset_id']}", params=params, headers=tenant.headers("viewer"))
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"items", "next_cursor"} and len(body["items"]) <= 2
        entries += body["items"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert [(e["action"], e["version_before"], e["version_after"]) for e in entries] == [
        ("asset.created", None, 1),
        ("asset.updated", 1, 2),
        ("asset.replaced", 2, 3),
        ("asset.deleted", 3, 4),
        ("asset.restored", 4, 5),
    ]
    ed, ad = f"key:{key_id(tenant, 'editor')}", f"key:{key_id(tenant, 'admin')}"
    assert [e["actor"] for e in entries] == [ed, ad, ed, ad, ed]
    assert [e["request_id"] for e in entries[:4]] == ["r-1", "r-2", "r-3", "r-4"]
    assert entries[4]["request_id"]  # one is generated when the client sends none
    times = [datetime.fromisoformat(e["at"]) for e in entries]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert all(e["event_id"] for e in entries)
    assert len({e["audit_id"] for e in entries}) == 5


async def test_list_shapes_and_bad_cursors(client, tenant):
    h = tenant.headers("viewer")
    asset = await create(client, tenant.headers("editor"), QN)
    for path, params in [
        ("/metadata/search", {"cursor": "!!!"}),
        ("/metadata/search", {"cursor": "e30"}),
        (f"/metadata/audit/{asset['asset_id']}", {"cursor": "bm9wZQ"}),
        (f"/metadata/audit/{asset['asset_id']}", {"cursor": "InN0cmluZyI"}),
        (f"/metadata/{asset['asset_id']}", {"history_cursor": "%%%"}),
        (f"/metadata/{asset['asset_id']}", {"history_cursor": "InN0cmluZyI"}),
        ("/metadata/search", {"limit": 0}),
        ("/metadata/search", {"limit": "many"}),
        (f"/metadata/{asset['asset_id']}", {"history_limit": 1000}),
        (f"/metadata/{asset['asset_id']}", {"include_deleted": "perhaps"}),
    ]:
        r = await client.get(path, params=params, headers=h)
        problem = assert_problem(r, 422, "validation")
        assert problem["errors"] and all(e["field"] in params for e in problem["errors"]), (path, params, problem)
