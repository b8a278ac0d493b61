"""``GET /metadata/search``: full text, exact qualified name, type and tag filters, cursor pagination."""

from __future__ import annotations

from typing import Any

from .helpers import assert_problem


async def seed(client: Any, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    specs = [
        ("pg://wh/sales.orders", "table", "Customer orders, one row per order", ["pii", "gold"]),
        ("pg://wh/sales.order_lines", "table", "Line items of each order", ["gold"]),
        ("pg://wh/sales.customers", "table", "Customers and their addresses", ["pii"]),
        ("pg://wh/sales.v_revenue", "view", "Revenue per day", []),
        ("looker://dash/revenue", "dashboard", "The revenue dashboard for finance", ["finance"]),
        ("kafka://prod/orders-events", "topic", "Order events as they happen", ["pii", "stream"]),
        ("airflow://etl/load_orders", "job", "Nightly load", ["gold"]),
    ]
    out = {}
    for qn, type_, description, tags in specs:
        r = await client.post(
            "/metadata",
            json={"qualified_name": qn, "type": type_, "description": description, "tags": tags},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        out[qn] = r.json()
    return out


async def names(client: Any, headers: dict[str, str], **params: Any) -> list[str]:
    r = await client.get("/metadata/search", params={"limit": 500, **params}, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"items", "next_cursor"} and body["next_cursor"] is None
    return [a["qualified_name"] for a in body["items"]]


async def test_filters(client, tenant):
    await seed(client, tenant.headers("editor"))
    h = tenant.headers("viewer")
    assert len(await names(client, h)) == 7
    # q covers name, qualified name and description; several words must all match.
    assert set(await names(client, h, q="revenue")) == {"pg://wh/sales.v_revenue", "looker://dash/revenue"}
    # Descriptions are stemmed: "customers" also finds "Customer orders", ranked below the name match.
    assert await names(client, h, q="customers") == ["pg://wh/sales.customers", "pg://wh/sales.orders"]
    assert set(await names(client, h, q="addresses")) == {"pg://wh/sales.customers"}  # description only
    assert set(await names(client, h, q="looker")) == {"looker://dash/revenue"}  # qualified name only
    assert set(await names(client, h, q="revenue finance")) == {"looker://dash/revenue"}
    assert await names(client, h, q="nothing-like-this") == []
    # A name match ranks above a description-only match.
    ranked = await names(client, h, q="orders")
    assert ranked[0] == "pg://wh/sales.orders"
    assert set(ranked) >= {"pg://wh/sales.orders", "kafka://prod/orders-events", "airflow://etl/load_orders"}
    # Exact qualified name, nothing fuzzy.
    assert await names(client, h, qualified_name="pg://wh/sales.orders") == ["pg://wh/sales.orders"]
    assert await names(client, h, qualified_name="pg://wh/sales.order") == []
    # Types: any of several, case-insensitive.
    assert set(await names(client, h, type="view")) == {"pg://wh/sales.v_revenue"}
    assert set(await names(client, h, type=["VIEW", "dashboard"])) == {
        "pg://wh/sales.v_revenue",
        "looker://dash/revenue",
    }
    # Tags: repeat to require all.
    assert set(await names(client, h, tag="pii")) == {
        "pg://wh/sales.orders",
        "pg://wh/sales.customers",
        "kafka://prod/orders-events",
    }
    assert set(await names(client, h, tag=["pii", "gold"])) == {"pg://wh/sales.orders"}
    assert await names(client, h, tag="nope") == []
    # Filters combine.
    assert await names(client, h, q="orders", type="table", tag="pii") == ["pg://wh/sales.orders"]
    # Bad parameters are 422s naming the parameter.
    for params, field in [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"q": "x" * 513}, "q"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"q": "a\x00"}, "q"),
        ({"qualified_name": "\x00"}, "qualified_name"),
        ({"type": ["table", "\x00"]}, "type[1]"),
        ({"tag": "\x00"}, "tag[0]"),
    ]:
        problem = assert_problem(await client.get("/metadata/search", params=params, headers=h), 422, "validation")
        assert [e["field"] for e in problem["errors"]] == [field]


async def test_search_never_shows_deleted_or_other_tenants_assets(client, tenant, other_tenant):
    assets = await seed(client, tenant.headers("editor"))
    await seed(client, other_tenant.headers("editor"))  # the same names in another tenant
    own_ids = {a["asset_id"] for a in assets.values()}
    r = await client.delete(f"/metadata/{assets['pg://wh/sales.orders']['asset_id']}", headers=tenant.headers("editor"))
    assert r.status_code == 200
    h = tenant.headers("viewer")
    for params in [
        {},
        {"q": "orders"},
        {"qualified_name": "pg://wh/sales.customers"},
        {"tag": "pii"},
        {"type": "table"},
    ]:
        r = await client.get("/metadata/search", params=params, headers=h)
        items = r.json()["items"]
        assert items and all(a["asset_id"] in own_ids for a in items), params
        assert "pg://wh/sales.orders" not in [a["qualified_name"] for a in items]


async def walk(client: Any, headers: dict[str, str], limit: int, **params: Any) -> tuple[list[str], int]:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await client.get("/metadata/search", params=query, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        seen += [a["asset_id"] for a in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 100


async def test_cursor_pagination_has_no_duplicates_or_gaps(client, tenant):
    h = tenant.headers("editor")
    expected: set[str] = set()
    for i in range(23):
        # Descriptions vary so ranks differ for some and tie for others.
        description = "sales " * (1 + i % 4) + f"number {i}"
        r = await client.post(
            "/metadata",
            json={
                "qualified_name": f"pg://wh/s.t{i:02d}",
                "type": "table",
                "description": description,
                "tags": ["even" if i % 2 else "odd"],
            },
            headers=h,
        )
        assert r.status_code == 201
        expected.add(r.json()["asset_id"])
    await client.post("/metadata", json={"qualified_name": "pg://wh/s.other", "type": "view"}, headers=h)

    for params, want in [({"type": "table"}, expected), ({"q": "sales"}, expected)]:
        for limit in (1, 5, 7):
            seen, pages = await walk(client, h, limit, **params)
            assert len(seen) == len(set(seen)), "a row appeared on two pages"
            assert set(seen) == want
            assert pages == -(-len(want) // limit)  # the last page says there is no next one
    # Ranked order: each page continues where the last left off.
    one_page, _ = await walk(client, h, 500, q="sales")
    paged, _ = await walk(client, h, 4, q="sales")
    assert paged == one_page
    seen, _ = await walk(client, h, 3, tag="odd")
    assert len(seen) == 12 and len(set(seen)) == 12
