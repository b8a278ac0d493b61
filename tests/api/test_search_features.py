"""``GET /metadata/search``: ranking order, stemming, identifiers, prefix and typo matching, column names,
filters, sorts with keyset pages, facets, bounded totals, and bad input."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from .helpers import assert_problem


async def post(client: Any, headers: dict[str, str], qn: str, **fields: Any) -> dict[str, Any]:
    r = await client.post("/metadata", json={"qualified_name": qn, "type": "table", **fields}, headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def search(client: Any, headers: dict[str, str], **params: Any) -> dict[str, Any]:
    r = await client.get("/metadata/search", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def names(client: Any, headers: dict[str, str], **params: Any) -> list[str]:
    body = await search(client, headers, limit=500, **params)
    return [a["name"] for a in body["items"]]


async def test_ranking_order_exact_prefix_then_field_weights(client, tenant):
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.invoice", name="invoice")  # exact name
    await post(client, h, "pg://wh/x.invoice_lines", name="invoice_lines")  # name prefix
    await post(client, h, "pg://wh/invoice.summary", name="summary")  # qualified name
    await post(client, h, "pg://wh/x.payments", name="payments", attributes={"columns": [{"name": "invoice"}]})
    await post(client, h, "pg://wh/x.ledger", name="ledger", description="Each invoice booked")  # description
    await post(client, h, "pg://wh/x.misc", name="misc", tags=["invoice"])  # tag only
    await post(client, h, "pg://wh/x.other", name="other", description="unrelated")
    got = await names(client, tenant.headers("viewer"), q="invoice")
    assert got == ["invoice", "invoice_lines", "summary", "payments", "ledger", "misc"]


async def test_stemming_for_prose_exact_tokens_for_identifiers(client, tenant):
    h = tenant.headers("editor")
    await post(client, h, "kafka://p/clicks", name="clicks", description="One event per click")
    await post(client, h, "pg://wh/x.events_v2", name="events_v2", description="Raw feed")
    v = tenant.headers("viewer")
    # "events" finds the stemmed description ("event") as well as the identifier token.
    assert set(await names(client, v, q="events")) == {"clicks", "events_v2"}
    # "event" finds the prose by its stem; events_v2 only as a name prefix, which ranks first.
    assert await names(client, v, q="event") == ["events_v2", "clicks"]
    # Whole identifier tokens and their parts both match.
    assert await names(client, v, q="v2") == ["events_v2"]


async def test_prefix_and_typo_matching_of_names(client, tenant):
    h = tenant.headers("editor")
    for name in ("customer_accounts", "customers", "suppliers"):
        await post(client, h, f"pg://wh/x.{name}", name=name)
    v = tenant.headers("viewer")
    # Both are name prefixes; the closer one (by trigram similarity) first.
    assert await names(client, v, q="custo") == ["customers", "customer_accounts"]
    # A misspelt name still finds it, first.
    assert (await names(client, v, q="custmers"))[0] == "customers"
    assert "suppliers" in await names(client, v, q="supliers")
    assert await names(client, v, q="zzzqqq") == []


async def test_column_names_are_searchable(client, tenant):
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.t", name="t", attributes={"columns": [{"name": "iban_number"}, {"name": "x"}]})
    await post(client, h, "pg://wh/x.u", name="u", attributes={"columns": "not a list"})
    assert await names(client, tenant.headers("viewer"), q="iban_number") == ["t"]


async def test_filters_owner_source_prefix_and_updated_since(client, tenant):
    h = tenant.headers("editor")
    a = await post(client, h, "pg://wh/fin.a", owners=["ann"], tags=["gold"])
    await post(client, h, "pg://wh/fin.b", owners=["bob"], type="view")
    await post(client, h, "pg://wh/ops.c", owners=["ann", "bob"])
    await post(client, h, "pg://wh/fin_x.d")  # "_" in a prefix is literal, not a wildcard
    v = tenant.headers("viewer")
    assert set(await names(client, v, owner="ann")) == {"a", "c"}
    assert set(await names(client, v, owner=["ann", "bob"])) == {"a", "b", "c"}
    assert set(await names(client, v, qualified_name_prefix="pg://wh/fin.")) == {"a", "b"}
    assert await names(client, v, qualified_name_prefix="pg://wh/fin%") == []
    assert set(await names(client, v, source="api")) == {"a", "b", "c", "d"}
    assert await names(client, v, source="openlineage") == []
    assert await names(client, v, qualified_name_prefix="pg://wh/fin.", type="view", owner="bob") == ["b"]
    later = a["updated_at"]
    everything = await names(client, v, updated_since=later)
    assert "a" in everything and len(everything) == 4
    assert await names(client, v, updated_since="2999-01-01T00:00:00+00:00") == []


async def walk(client: Any, headers: dict[str, str], limit: int, **params: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        body = await search(client, headers, limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        seen += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("no last page")


async def test_sorts_and_keyset_pages(client, tenant):
    h = tenant.headers("editor")
    for i in range(17):
        # Equal names for some, so the asset id breaks ties.
        await post(client, h, f"pg://wh/s{i:02d}.t", name=f"n{i % 5}", description="sales " * (1 + i % 3))
    v = tenant.headers("viewer")
    for sort, key in [("name", lambda a: (a["name"].encode(), a["asset_id"])), ("updated_at", None)]:
        whole = await walk(client, v, 500, sort=sort)
        assert len(whole) == 17
        for limit in (1, 4, 6):
            paged = await walk(client, v, limit, sort=sort)
            assert [a["asset_id"] for a in paged] == [a["asset_id"] for a in whole]
        if key is not None:
            assert whole == sorted(whole, key=key)
        else:
            stamps = [a["updated_at"] for a in whole]
            assert stamps == sorted(stamps, reverse=True)
    ranked = await walk(client, v, 500, q="sales")
    assert len(ranked) == 17
    assert [a["asset_id"] for a in await walk(client, v, 3, q="sales")] == [a["asset_id"] for a in ranked]
    assert [a["asset_id"] for a in await walk(client, v, 5, q="sales", sort="name")] == [
        a["asset_id"] for a in sorted(ranked, key=lambda a: (a["name"].encode(), a["asset_id"]))
    ]


async def test_facets_and_totals(client, tenant):
    h = tenant.headers("editor")
    for i in range(6):
        await post(
            client,
            h,
            f"pg://wh/f.{i}",
            type="view" if i < 2 else "table",
            tags=["gold", "pii"] if i % 2 else ["gold"],
            owners=["ann"] if i < 3 else [],
        )
    v = tenant.headers("viewer")
    body = await search(client, v, facets="type,tag,owner", total="true", limit=2)
    assert body["total"] == 6 and body["total_exact"] is True
    assert body["facets"] == {
        "type": [{"value": "table", "count": 4}, {"value": "view", "count": 2}],
        "tag": [{"value": "gold", "count": 6}, {"value": "pii", "count": 3}],
        "owner": [{"value": "ann", "count": 3}],
    }
    assert body["facets_exact"] is True
    # Facets follow the filters.
    body = await search(client, v, facets=["source", "type"], type="view", total="true")
    assert body["facets"] == {"source": [{"value": "api", "count": 2}], "type": [{"value": "view", "count": 2}]}
    assert body["total"] == 2
    # Matches whose facet has no value at all: the total is still counted.
    body = await search(client, v, facets="owner", qualified_name_prefix="pg://wh/f.4", total="true")
    assert body["facets"] == {"owner": []} and body["total"] == 1 and body["total_exact"] is True
    # Without asking, neither is computed.
    assert set(await search(client, v)) == {"items", "next_cursor"}


async def test_total_and_ranking_bounds_are_flagged(app, tenant):
    from lily.domain.search import Filters, Sort
    from lily.store import search as store

    db = app.state.runtime.db
    async with db.tenant(tenant.tenant_id) as conn:
        await conn.execute("SET LOCAL ROLE postgres")
        await conn.execute(
            "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, description, version,"
            " created_at, updated_at) SELECT %s, gen_random_uuid(), 'pg://b/' || i, 'table', 'b' || i,"
            " 'common word', 1, now(), now() FROM generate_series(1, 30) i",
            [tenant.tenant_id],
        )
        await conn.execute("RESET ROLE")
        assert await store.count(conn, Filters(q="common"), bound=10) == (10, False)
        assert await store.count(conn, Filters(q="common"), bound=30) == (30, True)
        found = await store.page(conn, Filters(q="common"), sort=Sort.relevance, after=None, limit=5, candidates=8)
        assert len(found.hits) == 5 and found.ranked == 8
        faceted = await store.facets(conn, Filters(q="common"), ["type", "source"], bound=12)
        assert faceted.values == {"type": [{"value": "table", "count": 13}], "source": [{"value": "api", "count": 13}]}
        assert faceted.exact is False
        # The total from the facets' pass is what a count answers, as long as its bound is the larger.
        assert faceted.total(bound=10) == (10, False) and faceted.total(bound=30) is None
        assert (await store.facets(conn, Filters(q="common"), ["type"])).total(bound=30) == (30, True)
        assert (await store.facets(conn, Filters(q="nothing"), ["type"])).total() is None
        # A row found both by text and by name prefix is one candidate, scored once (migration 0016 scores
        # candidates in the scans that find them; both give it the same score).
        await conn.execute("SET LOCAL ROLE postgres")
        await conn.execute(
            "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, description, version, created_at,"
            " updated_at) VALUES (%s, gen_random_uuid(), 'pg://b/common', 'table', 'common', 'common word', 1, now(),"
            " now())",
            [tenant.tenant_id],
        )
        await conn.execute("RESET ROLE")
        found = await store.page(conn, Filters(q="common"), sort=Sort.relevance, after=None, limit=100)
        assert found.ranked == 31 and len({h.asset.asset_id for h in found.hits}) == 31
        assert found.hits[0].asset.name == "common" and found.hits[0].position["score"] > 3


def forged(position: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(position)).decode().rstrip("=")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": forged(["name", "x", "not-a-uuid"])}, "cursor"),
        ({"cursor": forged(["relevance", 1.0, "00000000-0000-0000-0000-000000000000"])}, "cursor"),  # no q
        (
            {
                "sort": "updated_at",
                "cursor": forged(["updated_at", "yesterday", "00000000-0000-0000-0000-000000000000"]),
            },
            "cursor",
        ),
        (
            {
                "sort": "updated_at",
                "cursor": forged(["updated_at", "2024-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]),
            },
            "cursor",
        ),
        ({"q": "x", "cursor": forged(["relevance", "1e999", "00000000-0000-0000-0000-000000000000"])}, "cursor"),
        ({"q": "x", "cursor": forged(["name", "a", "00000000-0000-0000-0000-000000000000"])}, "cursor"),
        ({"cursor": forged({"a": 1})}, "cursor"),
        ({"sort": "relevance"}, "sort"),
        ({"sort": "size"}, "sort"),
        ({"facets": "type,colour"}, "facets"),
        ({"updated_since": "2024-01-01T00:00:00"}, "updated_since"),
        ({"updated_since": "soon"}, "updated_since"),
        ({"owner": "\x00"}, "owner[0]"),
        ({"source": "x" * 257}, "source[0]"),
        ({"qualified_name_prefix": "a\x00"}, "qualified_name_prefix"),
        ({"total": "maybe"}, "total"),
    ],
)
async def test_bad_input_is_422_naming_the_field(client, tenant, params, field):
    r = await client.get("/metadata/search", params=params, headers=tenant.headers("viewer"))
    problem = assert_problem(r, 422, "validation")
    assert [e["field"] for e in problem["errors"]] == [field], problem


async def test_odd_but_valid_text_never_fails(client, tenant):
    await post(client, tenant.headers("editor"), "pg://wh/x.o'brien", name="o'brien", description="100% _done_ \\ ok")
    v = tenant.headers("viewer")
    for q in ["o'brien", "100%", "_", "\\", '"unclosed', "-", "a & b | !c", "the", "%%%", "' OR 1=1 --"]:
        await search(client, v, q=q, facets="type", total="true")
    assert await names(client, v, q="o'brien") == ["o'brien"]


async def test_phrases_and_negation(client, tenant):
    """The index's keys have no positions: a phrase is found through its words and decided on the row."""
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.one", name="one", description="the monthly revenue report")
    await post(client, h, "pg://wh/x.two", name="two", description="revenue, reported monthly")
    await post(client, h, "pg://wh/x.three", name="three", description="monthly costs")
    v = tenant.headers("viewer")
    assert await names(client, v, q='"monthly revenue"') == ["one"]
    assert set(await names(client, v, q="monthly revenue")) == {"one", "two"}
    assert await names(client, v, q="monthly -revenue") == ["three"]
    assert set(await names(client, v, q="costs or report")) == {"one", "two", "three"}  # "reported": stemmed


async def test_filter_values_with_quotes_and_backslashes(client, tenant):
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.q", tags=["it's"], owners=["o\\brien"])
    await post(client, h, "pg://wh/x.r", tags=["its"], owners=["obrien"])
    v = tenant.headers("viewer")
    assert await names(client, v, tag="it's") == ["q"]
    assert await names(client, v, owner="o\\brien") == ["q"]
    assert await names(client, v, tag="it's", owner="obrien") == []
