"""``GET /metadata/lineage/{id}``: directions, depth and its cap, cycles, column lineage, the node limit."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import httpx

from lily.domain.lineage import MAX_DEPTH, MAX_NODE_LIMIT

from .helpers import assert_problem, create, fields_of

Graph = dict[str, Any]


async def link(client: httpx.AsyncClient, tenant: Any, ups: list[str], downs: list[str], **extra: Any) -> Any:
    r = await client.post(
        "/metadata/lineage",
        headers=tenant.headers("editor"),
        json={
            "upstreams": [{"qualified_name": u} for u in ups],
            "downstreams": [{"qualified_name": d} for d in downs],
            **extra,
        },
    )
    assert r.status_code == 201, r.text
    return r.json()


async def asset_id(client: httpx.AsyncClient, tenant: Any, qn: str) -> str:
    r = await client.get("/metadata/search", params={"qualified_name": qn}, headers=tenant.headers("viewer"))
    (item,) = r.json()["items"]
    return str(item["asset_id"])


async def graph(client: httpx.AsyncClient, tenant: Any, root: str, **params: Any) -> Graph:
    r = await client.get(f"/metadata/lineage/{root}", params=params, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body: Graph = r.json()
    return body


def names(g: Graph) -> dict[str, int]:
    """Qualified name → depth of every node."""
    return {n["qualified_name"]: n["depth"] for n in g["nodes"]}


def edges(g: Graph) -> set[tuple[str, str]]:
    """(upstream, downstream) names of every edge; every edge's ends are nodes of the answer."""
    by_id = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    assert all(e["upstream_id"] in by_id and e["downstream_id"] in by_id for e in g["edges"]), g
    return {(by_id[e["upstream_id"]], by_id[e["downstream_id"]]) for e in g["edges"]}


async def test_directions(client, tenant):
    # u2 → u1 → root → d1 → d2, and a side input x → d1: x is neither upstream nor downstream of root.
    for up, down in [("u2", "u1"), ("u1", "root"), ("root", "d1"), ("d1", "d2"), ("x", "d1")]:
        await link(client, tenant, [up], [down])
    root = await asset_id(client, tenant, "root")

    g = await graph(client, tenant, root, direction="upstream")
    assert (g["root"], g["direction"], g["truncated"]) == (root, "upstream", False)
    assert names(g) == {"root": 0, "u1": 1, "u2": 2}
    assert edges(g) == {("u2", "u1"), ("u1", "root")}

    g = await graph(client, tenant, root, direction="downstream")
    assert names(g) == {"root": 0, "d1": 1, "d2": 2}
    assert edges(g) == {("root", "d1"), ("d1", "d2")}

    for params in ({"direction": "both"}, {}):  # both is the default
        g = await graph(client, tenant, root, **params)
        assert g["direction"] == "both"
        assert names(g) == {"root": 0, "u1": 1, "d1": 1, "u2": 2, "d2": 2}
        assert edges(g) == {("u2", "u1"), ("u1", "root"), ("root", "d1"), ("d1", "d2")}
        assert [n["depth"] for n in g["nodes"]] == sorted(n["depth"] for n in g["nodes"])  # nearest first
        assert {n["placeholder"] for n in g["nodes"]} == {True}
        assert g["edges"][0]["columns"] is None  # not asked for

    # An asset without lineage is a graph of one node.
    lonely = await create(client, tenant.headers("editor"), "lonely")
    g = await graph(client, tenant, lonely["asset_id"])
    assert (names(g), g["edges"], g["depth_reached"], g["truncated"]) == ({"lonely": 0}, [], 0, False)


async def test_depth_limits_and_the_cap(client, tenant):
    chain = [f"c{i:02}" for i in range(MAX_DEPTH + 2)]  # 22 assets, 21 hops
    for up, down in pairwise(chain):
        await link(client, tenant, [up], [down])
    first, middle = await asset_id(client, tenant, chain[0]), await asset_id(client, tenant, chain[10])

    g = await graph(client, tenant, first, direction="downstream", depth=3)
    assert names(g) == {"c00": 0, "c01": 1, "c02": 2, "c03": 3}
    assert (g["depth"], g["depth_reached"], g["truncated"]) == (3, 3, False)
    assert edges(g) == {("c00", "c01"), ("c01", "c02"), ("c02", "c03")}

    g = await graph(client, tenant, first, direction="downstream", depth=0)
    assert (names(g), g["edges"], g["depth"]) == ({"c00": 0}, [], 0)

    g = await graph(client, tenant, first, direction="downstream")  # the default depth
    assert g["depth"] == 3 and g["depth_reached"] == 3

    # Deeper than the cap: clamped, not refused, and the answer says which depth it used.
    g = await graph(client, tenant, first, direction="downstream", depth=1000)
    assert (g["depth"], g["depth_reached"]) == (MAX_DEPTH, MAX_DEPTH)
    assert len(g["nodes"]) == MAX_DEPTH + 1 and "c21" not in names(g)
    assert len(g["edges"]) == MAX_DEPTH

    g = await graph(client, tenant, middle, direction="both", depth=2)
    assert names(g) == {"c10": 0, "c09": 1, "c11": 1, "c08": 2, "c12": 2}

    for bad in ({"depth": -1}, {"depth": "deep"}):
        r = await client.get(f"/metadata/lineage/{first}", params=bad, headers=tenant.headers("viewer"))
        assert fields_of(assert_problem(r, 422, "validation")) == {"depth"}


async def test_cycles_terminate(client, tenant):
    # a → b → c → a, and a → b → d → b (a second, inner cycle).
    for up, down in [("a", "b"), ("b", "c"), ("c", "a"), ("b", "d"), ("d", "b")]:
        await link(client, tenant, [up], [down])
    a = await asset_id(client, tenant, "a")
    cycle = {("a", "b"), ("b", "c"), ("c", "a"), ("b", "d"), ("d", "b")}

    for direction in ("upstream", "downstream", "both"):
        g = await graph(client, tenant, a, direction=direction, depth=MAX_DEPTH)
        assert sorted(names(g)) == ["a", "b", "c", "d"], direction
        assert len(g["nodes"]) == 4 and len(g["edges"]) == 5
        assert edges(g) == cycle
        assert g["truncated"] is False
    assert names(await graph(client, tenant, a, direction="downstream", depth=MAX_DEPTH)) == {
        "a": 0,
        "b": 1,
        "c": 2,
        "d": 2,
    }
    assert names(await graph(client, tenant, a, direction="upstream", depth=MAX_DEPTH)) == {
        "a": 0,
        "c": 1,
        "b": 2,
        "d": 3,
    }
    # Both ways, each node at its nearest distance in either direction.
    assert names(await graph(client, tenant, a, direction="both", depth=MAX_DEPTH)) == {"a": 0, "b": 1, "c": 1, "d": 2}

    r = await client.get(f"/metadata/lineage/{a}/impact", headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    impacted = {x["qualified_name"]: x["distance"] for x in r.json()["assets"]}
    assert impacted == {"b": 1, "c": 2, "d": 2}  # never the analysed asset itself


async def test_column_lineage(client, tenant):
    raw = await create(client, tenant.headers("editor"), "pg://db/raw.orders")
    body = await link(
        client,
        tenant,
        ["pg://db/raw.orders", "pg://db/raw.fx"],
        ["pg://db/mart.revenue"],
        process={"qualified_name": "dbt://models/revenue"},
        column_mappings=[
            {
                "column": "revenue_eur",
                "asset": {"qualified_name": "pg://db/mart.revenue"},
                "upstreams": [
                    {"asset": {"qualified_name": "pg://db/raw.orders"}, "column": "amount"},
                    {"asset": {"qualified_name": "pg://db/raw.orders"}, "column": "discount"},
                    {"asset": {"qualified_name": "pg://db/raw.fx"}, "column": "rate"},
                ],
                "transformation": "sum((amount - discount) * rate)",
            },
            {"column": "order_id", "upstreams": [{"asset": {"qualified_name": "pg://db/raw.orders"}, "column": "id"}]},
        ],
    )
    assert body["columns"] == {"written": 4, "removed": 0}

    g = await graph(client, tenant, raw["asset_id"], direction="downstream", columns="true")
    by_id = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    (edge,) = g["edges"]
    assert by_id[edge["downstream_id"]] == "pg://db/mart.revenue"
    assert edge["process_qualified_name"] == "dbt://models/revenue"
    assert edge["process_id"] == await asset_id(client, tenant, "dbt://models/revenue")
    assert sorted((c["downstream_column"], c["upstream_column"], c["transformation"]) for c in edge["columns"]) == [
        ("order_id", "id", None),
        ("revenue_eur", "amount", "sum((amount - discount) * rate)"),
        ("revenue_eur", "discount", "sum((amount - discount) * rate)"),
    ]

    # Upstream from the mart, both input edges carry their columns.
    mart = await asset_id(client, tenant, "pg://db/mart.revenue")
    g = await graph(client, tenant, mart, direction="upstream", columns=True)
    by_id = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    cols = {
        by_id[e["upstream_id"]]: [(c["downstream_column"], c["upstream_column"]) for c in e["columns"]]
        for e in g["edges"]
    }
    assert cols == {
        "pg://db/raw.orders": [("order_id", "id"), ("revenue_eur", "amount"), ("revenue_eur", "discount")],
        "pg://db/raw.fx": [("revenue_eur", "rate")],
    }
    assert all(e["columns"] is None for e in (await graph(client, tenant, mart))["edges"])

    # A mapping states the whole input of a column on an edge: without "discount" again, that input goes.
    body = await link(
        client,
        tenant,
        ["pg://db/raw.orders", "pg://db/raw.fx"],
        ["pg://db/mart.revenue"],
        process={"qualified_name": "dbt://models/revenue"},
        column_mappings=[
            {
                "column": "revenue_eur",
                "upstreams": [{"asset": {"qualified_name": "pg://db/raw.orders"}, "column": "amount"}],
                "transformation": "sum(amount)",
            }
        ],
    )
    assert body["columns"] == {"written": 1, "removed": 1}
    assert [e["created"] for e in body["edges"]] == [False, False]
    g = await graph(client, tenant, mart, direction="upstream", columns=True)
    by_id = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    cols = {
        (c["downstream_column"], c["upstream_column"], c["transformation"])
        for e in g["edges"]
        if by_id[e["upstream_id"]] == "pg://db/raw.orders"
        for c in e["columns"]
    }
    assert cols == {("order_id", "id", None), ("revenue_eur", "amount", "sum(amount)")}
    # An edge without mappings says so with an empty list, not null.
    await link(client, tenant, ["pg://db/raw.customers"], ["pg://db/mart.revenue"])
    g = await graph(client, tenant, mart, direction="upstream", columns=True)
    by_id = {n["asset_id"]: n["qualified_name"] for n in g["nodes"]}
    assert [e["columns"] for e in g["edges"] if by_id[e["upstream_id"]] == "pg://db/raw.customers"] == [[]]


async def test_node_limit_truncates(client, tenant):
    hub = await create(client, tenant.headers("editor"), "hub")
    leaves = [f"leaf{i:02}" for i in range(10)]
    await link(client, tenant, ["hub"], leaves)
    await link(client, tenant, ["src"], ["hub"])

    g = await graph(client, tenant, hub["asset_id"], direction="downstream", limit=4)
    assert (g["node_limit"], g["truncated"]) == (4, True)
    assert len(g["nodes"]) == 4 and names(g)["hub"] == 0
    assert len(g["edges"]) == 3  # only edges between the nodes that are in the answer
    assert {u for u, _ in edges(g)} == {"hub"}

    g = await graph(client, tenant, hub["asset_id"], limit=1)
    assert (names(g), g["edges"], g["truncated"]) == ({"hub": 0}, [], True)

    # Exactly enough room is not truncation.
    g = await graph(client, tenant, hub["asset_id"], direction="downstream", limit=11)
    assert (len(g["nodes"]), len(g["edges"]), g["truncated"]) == (11, 10, False)
    g = await graph(client, tenant, hub["asset_id"], direction="both", limit=12)
    assert (len(g["nodes"]), g["truncated"]) == (12, False)
    g = await graph(client, tenant, hub["asset_id"], direction="both", limit=5)
    assert len(g["nodes"]) == 5 and g["truncated"] is True
    assert "src" in names(g)  # both sides are walked before the limit runs out

    # The impact list has its own limit and flag.
    r = await client.get(
        f"/metadata/lineage/{hub['asset_id']}/impact", params={"limit": 3}, headers=tenant.headers("viewer")
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["assets"]) == 3 and r.json()["truncated"] is True
    r = await client.get(
        f"/metadata/lineage/{hub['asset_id']}/impact", params={"limit": 10}, headers=tenant.headers("viewer")
    )
    assert len(r.json()["assets"]) == 10 and r.json()["truncated"] is False

    for bad in (0, MAX_NODE_LIMIT + 1):
        r = await client.get(
            f"/metadata/lineage/{hub['asset_id']}", params={"limit": bad}, headers=tenant.headers("viewer")
        )
        assert fields_of(assert_problem(r, 422, "validation")) == {"limit"}


async def test_column_changes_are_audited_on_the_asset_they_concern(client, tenant):
    orders, mart_a = {"qualified_name": "pg://db/raw.orders"}, {"qualified_name": "pg://db/mart.a"}
    await link(
        client,
        tenant,
        ["pg://db/raw.orders"],
        ["pg://db/mart.a", "pg://db/mart.b"],
        column_mappings=[
            {"column": c, "asset": mart_a, "upstreams": [{"asset": orders, "column": "id"}]} for c in ("x", "y")
        ],
    )
    trails = {}
    for qn in ("pg://db/mart.a", "pg://db/mart.b"):
        r = await client.get(f"/metadata/audit/{await asset_id(client, tenant, qn)}", headers=tenant.headers("viewer"))
        trails[qn] = {a["action"]: a["detail"] for a in r.json()["items"]}
    assert trails["pg://db/mart.a"]["lineage.columns"] == {"columns": ["x", "y"], "written": 2, "removed": 0}
    assert set(trails["pg://db/mart.b"]) == {"asset.placeholder_created", "lineage.added"}  # b has no mappings
