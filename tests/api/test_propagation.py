"""Downstream propagation: schema changes, deprecation and deletion reach passive downstream assets."""

from __future__ import annotations

import asyncio

from lily.domain.events import ASSET_UPSERT, NewEvent


async def wait_idle(app, tenant, rounds: int = 400) -> None:
    """Poll (bounded) until none of the tenant's events waits to be applied: follow-ups included."""
    runtime = app.state.runtime
    for _ in range(rounds):
        async with runtime.db.tenant(tenant.tenant_id) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM events WHERE status = 'accepted'")
            if (await cur.fetchone())["n"] == 0:
                return
        await asyncio.sleep(0.025)
    raise AssertionError("pipeline did not drain")


async def _put(client, tenant, qn, **fields):
    r = await client.post(
        "/metadata", json={"qualified_name": qn, "type": "table", **fields}, headers=tenant.headers("editor")
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


async def _link(client, tenant, up, down):
    r = await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={"upstreams": [{"qualified_name": up}], "downstreams": [{"qualified_name": down}]},
    )
    assert r.status_code == 201, r.text


async def _history(client, tenant, asset_id):
    r = await client.get(f"/metadata/{asset_id}", params={"history_limit": 50}, headers=tenant.headers("viewer"))
    return r.json()["history"]["items"]


async def _graph(client, tenant, app):
    a = await _put(client, tenant, "a", attributes={"columns": [{"name": "id"}]})
    b = await _put(client, tenant, "b")
    c = await _put(client, tenant, "c")
    d = await _put(client, tenant, "d")
    # "e" is fed by an OpenLineage producer: it has a source of its own.
    await app.state.runtime.writer.append_many(
        tenant.tenant_id,
        [
            NewEvent(
                tenant.tenant_id,
                "e",
                ASSET_UPSERT,
                {"qualified_name": "e", "type": "table"},
                "key:ol",
                source="openlineage",
            )
        ],
    )
    for up, down in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "a"), ("a", "e")]:
        await _link(client, tenant, up, down)  # a diamond (a→b,c→d) closed into a cycle (d→a)
    await wait_idle(app, tenant)
    return a, b, c, d


async def test_schema_change_reaches_each_passive_downstream_once(client, tenant, app):
    a, b, c, d = await _graph(client, tenant, app)
    await _put(client, tenant, "a", attributes={"columns": [{"name": "id"}, {"name": "amount"}]})
    await wait_idle(app, tenant)

    for asset in (b, c, d):
        propagated = [
            v for v in await _history(client, tenant, asset["asset_id"]) if v["action"] == "asset.upstream_changed"
        ]
        assert len(propagated) == 1, asset["qualified_name"]
        origin = propagated[0]["origin"]
        assert origin["qualified_name"] == "a"
        assert origin["change"]["kind"] == "schema_changed"
        assert origin["change"]["columns"]["to"] == [{"name": "id"}, {"name": "amount"}]
    # The cycle leads back to a: it is never told about its own change.
    assert not [v for v in await _history(client, tenant, a["asset_id"]) if v["action"] == "asset.upstream_changed"]
    r = await client.get("/metadata/search", params={"qualified_name": "e"}, headers=tenant.headers("viewer"))
    e = r.json()["items"][0]
    assert "lily.upstream_changed" not in e["attributes"]


async def test_deletion_and_deprecation_propagate(client, tenant, app):
    a, b, _, _ = await _graph(client, tenant, app)
    await _put(client, tenant, "b", tags=["deprecated"])
    await wait_idle(app, tenant)
    r = await client.get("/metadata/search", params={"qualified_name": "d"}, headers=tenant.headers("viewer"))
    d = r.json()["items"][0]
    assert d["attributes"]["lily.upstream_changed"]["from"] == "b"
    assert d["attributes"]["lily.upstream_changed"]["change"] == {"kind": "deprecated"}

    r = await client.delete(f"/metadata/{a['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code == 200
    await wait_idle(app, tenant)
    hist = await _history(client, tenant, b["asset_id"])
    assert hist[0]["action"] == "asset.upstream_changed"
    assert hist[0]["origin"]["change"] == {"kind": "deleted"}


async def test_propagation_can_be_turned_off_per_tenant(client, tenant, app):
    _, b, _, _ = await _graph(client, tenant, app)
    r = await client.put(
        f"/tenants/{tenant.tenant_id}/config", json={"propagation": {"enabled": False}}, headers=tenant.headers("admin")
    )
    assert r.status_code == 200, r.text
    assert r.json()["config"]["propagation"] == {"enabled": False, "max_depth": 10}
    await _put(client, tenant, "a", attributes={"columns": [{"name": "changed"}]})
    await wait_idle(app, tenant)
    assert not [v for v in await _history(client, tenant, b["asset_id"]) if v["action"] == "asset.upstream_changed"]


async def test_a_change_with_nothing_downstream_appends_nothing(client, tenant, app):
    await _graph(client, tenant, app)
    lonely = await _put(client, tenant, "lonely", attributes={"columns": [{"name": "id"}]})
    await _put(client, tenant, "lonely", attributes={"columns": [{"name": "renamed"}]})
    await _put(client, tenant, "a", attributes={"columns": [{"name": "id"}, {"name": "x"}]})
    await wait_idle(app, tenant)
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute(
            "SELECT payload->'origin'->>'qualified_name' AS origin, count(*) AS n FROM events"
            " WHERE kind = 'asset.upstream_changed' GROUP BY 1"
        )
        origins = {row["origin"]: row["n"] for row in await cur.fetchall()}
    assert origins == {"a": 3}  # b, c and d heard about a; nobody about the lonely asset
    assert lonely["version"] == 1
