from __future__ import annotations


async def test_create_then_get(client, tenant):
    r = await client.post(
        "/metadata", json={"qualified_name": "pg://db/s.orders", "type": "table"}, headers=tenant.headers("editor")
    )
    assert r.status_code == 201, r.text
    asset = r.json()
    assert asset["version"] == 1 and asset["name"] == "orders"
    r = await client.get(f"/metadata/{asset['asset_id']}", headers=tenant.headers("viewer"))
    assert r.status_code == 200
    assert r.json()["history"]["items"][0]["version"] == 1
