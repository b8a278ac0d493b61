"""Search after migration 0012: typo matching through the tenant's name words, the classification filter
(a parent matches its children) and facet, and isolation through both."""

from __future__ import annotations

import psycopg

from .test_search_features import names, post, search


def classify(database_url: str, tenant_id: str, name: str, classifications: list[str]) -> None:
    """Set the denormalised column as the classification pipeline does (each name with its parents)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        updated = conn.execute(
            "UPDATE assets SET classifications = %s WHERE tenant_id = %s AND name = %s",
            [classifications, tenant_id, name],
        ).rowcount
        assert updated == 1


def words(database_url: str, tenant_id: str) -> set[str]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute("SELECT word FROM asset_name_words WHERE tenant_id = %s", [tenant_id]).fetchall()
    return {r[0] for r in rows}


async def test_name_words_are_kept_for_typo_matching(client, tenant, database_url):
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.fct_shipments_daily_2024", name="fct_shipments_daily_2024")
    kept = words(database_url, tenant.tenant_id)
    # Words of three characters or more, lower case; numbers are not words.
    assert {"fct", "shipments", "daily"} <= kept and "2024" not in kept
    v = tenant.headers("viewer")
    assert await names(client, v, q="shipmnets") == ["fct_shipments_daily_2024"]
    # A renamed asset's new words are found too (the update trigger); POST upserts by qualified name.
    r = await client.post(
        "/metadata",
        json={"qualified_name": "pg://wh/x.fct_shipments_daily_2024", "type": "table", "name": "warehouse_parcels"},
        headers=h,
    )
    assert r.status_code in (200, 201), r.text
    assert "parcels" in words(database_url, tenant.tenant_id)
    assert await names(client, v, q="parcles") == ["warehouse_parcels"]
    # A stale word (the old name's) matches nothing, rather than the renamed asset.
    assert await names(client, v, q="shipmnets") == []


async def test_typo_matches_rank_the_nearest_word_first(client, tenant):
    h = tenant.headers("editor")
    for name in ("orders_archive", "border_events", "recorders"):
        await post(client, h, f"pg://wh/x.{name}", name=name)
    got = await names(client, tenant.headers("viewer"), q="ordrs")
    assert got[0] == "orders_archive", got


async def test_classification_filter_matches_children_and_facets_count_them(client, tenant, database_url):
    h = tenant.headers("editor")
    for name in ("emails", "phones", "plain"):
        await post(client, h, f"pg://wh/c.{name}", name=name, description="contact data")
    classify(database_url, tenant.tenant_id, "emails", ["PII", "PII.Email"])
    classify(database_url, tenant.tenant_id, "phones", ["PII", "PII.Phone", "Sensitivity", "Sensitivity.High"])
    v = tenant.headers("viewer")
    assert sorted(await names(client, v, classification="PII")) == ["emails", "phones"]
    assert await names(client, v, classification="PII.Email") == ["emails"]
    # Repeated: all of them.
    assert await names(client, v, classification=["PII", "Sensitivity.High"]) == ["phones"]
    assert await names(client, v, classification="PII.Emai") == []
    # With text, a sort and a total.
    body = await search(client, v, q="contact", classification="PII", total="true", facets="classification")
    assert body["total"] == 2
    assert body["facets"]["classification"] == [
        {"value": "PII", "count": 2},
        {"value": "PII.Email", "count": 1},
        {"value": "PII.Phone", "count": 1},
        {"value": "Sensitivity", "count": 1},
        {"value": "Sensitivity.High", "count": 1},
    ]


async def test_words_and_classifications_of_another_tenant_are_unreachable(client, tenant, other_tenant, database_url):
    await post(client, other_tenant.headers("editor"), "pg://om/x.zanzibar_ledger", name="zanzibar_ledger")
    classify(database_url, other_tenant.tenant_id, "zanzibar_ledger", ["Secret", "Secret.Omega"])
    await post(client, tenant.headers("editor"), "pg://al/x.plain", name="plain")
    v = tenant.headers("viewer")
    assert "zanzibar" not in words(database_url, tenant.tenant_id)
    for params in ({"q": "zanzibr"}, {"q": "zanzibar"}, {"classification": "Secret"}):
        body = await search(client, v, **params, total="true", facets="classification,type")
        assert body["items"] == [] and body["total"] == 0, params
        assert all(values == [] for values in body["facets"].values()), params
    body = await search(client, v, facets="classification", total="true")
    assert body["total"] == 1 and body["facets"]["classification"] == []
    # The same searches find the other tenant's asset for the other tenant: they are not vacuous.
    theirs = other_tenant.headers("viewer")
    assert await names(client, theirs, q="zanzibr") == ["zanzibar_ledger"]
    assert await names(client, theirs, classification="Secret") == ["zanzibar_ledger"]


async def test_pages_of_matches_never_turn_into_typo_matches_and_typo_pages_go_on(client, tenant):
    """The typo fallback is decided after a page comes back empty (migration 0018): a later page of real
    matches that finds nothing more is empty, and a later page of a fallback stays in the fallback."""
    h, v = tenant.headers("editor"), tenant.headers("viewer")
    made = {n: await post(client, h, f"pg://wh/p.{n}", name=n) for n in ("orders_a", "orders_b", "orders_c")}
    for name in ("recorders", "borders_x"):  # near "orders" by trigrams, never a text or prefix match of it
        await post(client, h, f"pg://wh/p.{name}", name=name)
    first = await search(client, v, q="orders", limit=2)
    assert len(first["items"]) == 2 and first["next_cursor"]
    seen = {a["name"] for a in first["items"]}
    # The one match left is deleted: the next page is empty, not the typo matches of "orders".
    (left,) = {"orders_a", "orders_b", "orders_c"} - seen
    r = await client.delete(f"/metadata/{made[left]['asset_id']}", headers=h)
    assert r.status_code in (200, 204), r.text
    after = await search(client, v, q="orders", limit=2, cursor=first["next_cursor"])
    assert after["items"] == [], after["items"]
    # A misspelling finds the near words' names, and its pages go on through them.
    typo_first = await search(client, v, q="ordrs", limit=1)
    assert len(typo_first["items"]) == 1 and typo_first["next_cursor"]
    names_seen = [typo_first["items"][0]["name"]]
    cursor = typo_first["next_cursor"]
    while cursor:
        page = await search(client, v, q="ordrs", limit=1, cursor=cursor)
        names_seen += [a["name"] for a in page["items"]]
        cursor = page["next_cursor"]
    everything = await names(client, v, q="ordrs")
    assert names_seen == everything and len(everything) >= 2, (names_seen, everything)


def tokens(database_url: str, tenant_id: str) -> set[tuple[str, str]]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT t.word, a.name FROM asset_name_tokens t JOIN assets a USING (tenant_id, asset_id)"
            " WHERE t.tenant_id = %s",
            [tenant_id],
        ).fetchall()
    return {(r[0], r[1]) for r in rows}


async def test_name_tokens_follow_the_name(client, tenant, other_tenant, database_url):
    """The typo fallback's btree of (tenant, word, asset) (migration 0020) holds each live name's words."""
    h = tenant.headers("editor")
    await post(client, h, "pg://wh/x.stg_invoices", name="stg_invoices")
    await post(client, other_tenant.headers("editor"), "pg://wh/x.stg_invoices", name="stg_invoices")
    assert tokens(database_url, tenant.tenant_id) == {("stg", "stg_invoices"), ("invoices", "stg_invoices")}
    r = await client.post(
        "/metadata", json={"qualified_name": "pg://wh/x.stg_invoices", "type": "table", "name": "raw_bills"}, headers=h
    )
    assert r.status_code == 200, r.text
    assert tokens(database_url, tenant.tenant_id) == {("raw", "raw_bills"), ("bills", "raw_bills")}
    # The other tenant's asset of the same name kept its own.
    assert tokens(database_url, other_tenant.tenant_id) == {("stg", "stg_invoices"), ("invoices", "stg_invoices")}
    assert await names(client, tenant.headers("viewer"), q="bils") == ["raw_bills"]
    assert await names(client, tenant.headers("viewer"), q="invoces") == []
