"""``GET /metadata/search`` checks a cached credential inside its one read (``lily.api.deps.Reading``): the
page, facets and total travel in one pipeline with the credential's epoch, and a change made through
another API process still applies to the very next search."""

from __future__ import annotations

import httpx
import psycopg

from .helpers import assert_problem, count_round_trips, create, deny_viewers_finance

SEARCH = "/metadata/search"


async def _warm(client: httpx.AsyncClient, headers: dict[str, str], **params: str) -> httpx.Response:
    """Twice: the first request checks the credential in full and caches it, the second takes the cached path."""
    first = await client.get(SEARCH, params=params, headers=headers)
    second = await client.get(SEARCH, params=params, headers=headers)
    assert (first.status_code, first.json()) == (second.status_code, second.json())
    return second


async def test_a_cached_search_with_facets_and_total_is_one_round_trip(
    client, second_app, second_process, tenant, monkeypatch
):
    for i in range(3):
        await create(client, tenant.headers("editor"), f"pg://db/s/orders_{i}", owners=["ann"], tags=["gold"])
    params = {"q": "orders", "facets": "owner,tag", "total": "true"}
    await _warm(second_process, tenant.headers("viewer"), **params)
    checkouts = count_round_trips(second_app.state.runtime.db, monkeypatch)
    r = await second_process.get(SEARCH, params=params, headers=tenant.headers("viewer"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 3 and body["total"] == 3 and body["total_exact"] is True
    assert body["facets"]["owner"] == [{"value": "ann", "count": 3}]
    # One connection, and on it one pipeline: the settings, the credential's epoch, the page and the facets
    # are sent (in a pipeline an execute only sends), and its exit waits for them all: one round trip.
    sent = ["BaseCursor._execute_gen"] * 4
    assert checkouts == [["BasePipeline._enter_gen", *sent, "BasePipeline._exit_gen"]], checkouts


async def test_a_revoked_key_is_refused_by_the_next_search_in_another_process(client, second_process, tenant):
    await create(client, tenant.headers("editor"), "pg://db/s/orders")
    assert (await _warm(second_process, tenant.headers("viewer"), q="orders")).json()["items"]
    key_id = tenant.keys["viewer"].split(".")[1]
    r = await client.delete(f"/tenants/{tenant.tenant_id}/api-keys/{key_id}", headers=tenant.headers("admin"))
    assert r.status_code == 204, r.text
    assert_problem(await second_process.get(SEARCH, params={"q": "orders"}, headers=tenant.headers("viewer")), 401)


async def test_a_role_change_searches_as_the_caller_it_made(client, second_process, tenant, database_url):
    """A deny-read policy for viewers: the editor key finds the asset until it becomes a viewer, and the very
    next search (its statements sent with the old role's settings) answers as the viewer it is now:
    page, facets and total alike."""
    await create(client, tenant.headers("editor"), "pg://db/s/salaries", tags=["finance"])
    await create(client, tenant.headers("editor"), "pg://db/s/salaries_public")
    await deny_viewers_finance(client, tenant)
    params = {"q": "salaries", "facets": "tag", "total": "true"}
    before = (await _warm(second_process, tenant.headers("editor"), **params)).json()
    assert before["total"] == 2 and before["facets"]["tag"] == [{"value": "finance", "count": 1}]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_keys SET role = 'viewer' WHERE tenant_id = %s AND name = 'editor-key'", [tenant.tenant_id]
        )
    r = await second_process.get(SEARCH, params=params, headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    after = r.json()
    assert [a["name"] for a in after["items"]] == ["salaries_public"]
    assert after["total"] == 1 and after["facets"]["tag"] == []
