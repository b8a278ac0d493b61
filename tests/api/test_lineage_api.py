from __future__ import annotations


async def _asset(client, tenant, qn, type_="table"):
    r = await client.post("/metadata", json={"qualified_name": qn, "type": type_}, headers=tenant.headers("editor"))
    assert r.status_code in (200, 201), r.text
    return r.json()


async def test_lineage_roundtrip(client, tenant):
    src = await _asset(client, tenant, "pg://db/raw.orders")
    r = await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={
            "upstreams": [{"asset_id": src["asset_id"]}],
            "downstreams": [{"qualified_name": "pg://db/mart.orders_daily"}],
            "process": {"qualified_name": "airflow://dag/orders_daily"},
            "column_mappings": [
                {
                    "column": "total",
                    "upstreams": [{"asset": {"asset_id": src["asset_id"]}, "column": "amount"}],
                    "transformation": "sum(amount)",
                }
            ],
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["edges"][0]["created"] is True
    assert sorted(body["placeholders"]) == ["airflow://dag/orders_daily", "pg://db/mart.orders_daily"]

    r = await client.get(
        f"/metadata/lineage/{src['asset_id']}",
        params={"direction": "downstream", "columns": True},
        headers=tenant.headers("viewer"),
    )
    assert r.status_code == 200, r.text
    g = r.json()
    names = {n["qualified_name"]: n for n in g["nodes"]}
    assert set(names) == {"pg://db/raw.orders", "pg://db/mart.orders_daily"}
    assert names["pg://db/mart.orders_daily"]["placeholder"] is True
    assert g["edges"][0]["columns"][0]["transformation"] == "sum(amount)"

    r = await client.get(
        f"/metadata/lineage/{src['asset_id']}", params={"format": "mermaid"}, headers=tenant.headers("viewer")
    )
    assert r.status_code == 200 and r.text.startswith("flowchart")

    r = await client.get(f"/metadata/lineage/{src['asset_id']}/impact", headers=tenant.headers("viewer"))
    impacted = r.json()["assets"]
    assert [a["qualified_name"] for a in impacted] == ["pg://db/mart.orders_daily"]
    assert impacted[0]["distance"] == 1

    # A real write fills the placeholder in.
    filled = await _asset(client, tenant, "pg://db/mart.orders_daily")
    assert filled["placeholder"] is False and filled["version"] == 2

    r = await client.delete(f"/metadata/lineage/{src['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    assert r.json()["removed"] == 1
    r = await client.get(f"/metadata/lineage/{src['asset_id']}/impact", headers=tenant.headers("viewer"))
    assert r.json()["assets"] == []
