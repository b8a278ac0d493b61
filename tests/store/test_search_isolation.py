"""The search functions (migration 0006): their plans use the indexes when called as ``lily_app``, and
a tenant's rows are unreachable through every search parameter, facet and count — by the database."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lily.store.db import APP_ROLE


async def seed(client: Any, tenant: Any, marker: str) -> set[str]:
    """Assets whose every searchable value carries ``marker`` (and shared words both tenants use)."""
    ids = set()
    for i in range(3):
        r = await client.post(
            "/metadata",
            json={
                "qualified_name": f"pg://{marker}/shared.table_{i}",
                "type": f"{marker}type" if i == 0 else "table",
                "name": f"{marker}name{i}" if i else "sharedname",
                "description": f"shared words {marker}word",
                "tags": [f"{marker}tag", "sharedtag"],
                "owners": [f"{marker}owner"],
                "attributes": {"columns": [{"name": f"{marker}column"}]},
            },
            headers=tenant.headers("editor"),
        )
        assert r.status_code == 201, r.text
        ids.add(r.json()["asset_id"])
    return ids


async def test_every_search_parameter_stays_within_the_tenant(client, tenant, other_tenant):
    mine = await seed(client, tenant, "alpha")
    theirs = await seed(client, other_tenant, "omega")
    h = tenant.headers("viewer")
    sees_own = [
        {},
        {"q": "shared"},
        {"q": "sharedname"},
        {"q": "shar"},
        {"q": "sharednme"},
        {"q": "words"},
        {"tag": "sharedtag"},
        {"type": "table"},
        {"qualified_name_prefix": "pg://"},
        {"updated_since": "2000-01-01T00:00:00+00:00"},
        {"source": "api"},
        {"sort": "updated_at"},
        {"q": "shared", "sort": "name"},
    ]
    for params in sees_own:
        for limit in (1, 50):
            seen: list[str] = []
            cursor = None
            while True:
                query = {**params, "limit": limit, "facets": "type,tag,owner,source", "total": "true"}
                r = await client.get(
                    "/metadata/search", params=query | ({"cursor": cursor} if cursor else {}), headers=h
                )
                assert r.status_code == 200, (params, r.text)
                body = r.json()
                seen += [a["asset_id"] for a in body["items"]]
                values = {v["value"] for vs in body["facets"].values() for v in vs}
                assert values and not any("omega" in v for v in values), (params, values)
                assert 0 < body["total"] <= 3, params
                cursor = body["next_cursor"]
                if cursor is None:
                    break
            assert seen and set(seen) <= mine, params
    # The other tenant's values, in every parameter, find nothing — no rows, no facet values, no count.
    for params in [
        {"q": "omegaword"},
        {"q": "omeganame1"},
        {"q": "omegana"},
        {"q": "omeganame"},
        {"q": "omegacolumn"},
        {"q": "omegatag"},
        {"tag": "omegatag"},
        {"type": "omegatype"},
        {"owner": "omegaowner"},
        {"qualified_name": "pg://omega/shared.table_1"},
        {"qualified_name_prefix": "pg://omega"},
    ]:
        r = await client.get(
            "/metadata/search", params={**params, "facets": "type,tag,owner,source", "total": "true"}, headers=h
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["items"] == [] and body["total"] == 0, params
        assert all(v == [] for v in body["facets"].values()), params
    # And the same values do find the other tenant's own rows (the searches above are not vacuous).
    r = await client.get("/metadata/search", params={"q": "omegaword"}, headers=other_tenant.headers("viewer"))
    assert {a["asset_id"] for a in r.json()["items"]} == theirs


def as_app(database_url: str) -> psycopg.Connection[dict[str, Any]]:
    conn = psycopg.connect(database_url, autocommit=True, row_factory=dict_row)
    conn.execute(f"SET ROLE {APP_ROLE}")
    return conn


SEARCHES = [
    ({"q": "shared"}, "relevance"),
    ({"tags": ["sharedtag"]}, "name"),
    ({"owners": ["alphaowner"]}, "updated_at"),
]


async def test_no_tenant_set_finds_nothing_and_the_document_cannot_name_a_tenant(
    database_url: str, client: Any, tenant: Any, other_tenant: Any
) -> None:
    await seed(client, tenant, "alpha")
    await seed(client, other_tenant, "omega")
    with as_app(database_url) as conn:
        for filters, sort in SEARCHES:
            f = Jsonb(filters)
            assert conn.execute("SELECT * FROM lily_search_page(%s, %s, NULL, 100, 100)", [f, sort]).fetchall() == []
            assert conn.execute("SELECT lily_search_count(%s, 100) AS n", [f]).fetchone() == {"n": 0}
            facets = ["type", "tag", "owner", "source"]
            assert conn.execute("SELECT * FROM lily_search_facets(%s, %s, 10, 100)", [f, facets]).fetchall() == []
        # With a tenant set, a filter document naming another tenant changes nothing: it is not read.
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant.tenant_id])
            for key in ("tenant_id", "tenant"):
                doc = Jsonb({"q": "shared", key: other_tenant.tenant_id})
                rows = conn.execute(
                    "SELECT p.asset_id FROM lily_search_page(%s, 'relevance', NULL, 100, 100) p", [doc]
                ).fetchall()
                owners = conn.execute(
                    "SELECT DISTINCT a.tenant_id FROM assets a WHERE a.asset_id = ANY(%s)",
                    [[r["asset_id"] for r in rows]],
                ).fetchall()
                assert rows and owners == [{"tenant_id": tenant.tenant_id}]
        # The helper that builds the WHERE clause is not the app's to call.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT lily_search_where('{}')")


def explain_nested_as_app(conn: psycopg.Connection[dict[str, Any]], *, analyze: bool = False) -> None:
    """Have auto_explain report the plan of each statement the search functions run to this client (with
    actual rows when ``analyze``), then act as the app role. Loading auto_explain needs the superuser."""
    conn.execute("LOAD 'auto_explain'")
    conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        f" SET auto_explain.log_analyze = {'on' if analyze else 'off'}; SET client_min_messages = log;"
        " SET enable_seqscan = off"
    )
    conn.execute(f"SET ROLE {APP_ROLE}")


def plans_of(conn: psycopg.Connection[dict[str, Any]], query: str, params: list[Any]) -> str:
    """The plans of the statements ``query`` runs inside functions, as auto_explain reports them."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute(query, params).fetchall()
    conn._notice_handlers.clear()
    return "\n".join(notices)


@pytest.mark.parametrize(
    ("filters", "sort", "index"),
    [
        ({"q": "alphaword"}, "relevance", "assets_search_doc"),
        ({"q": "alphanam"}, "relevance", "assets_name_prefix"),
        # A misspelt name: an index of the tenant's name words (0012; for a handful of words the planner
        # takes the primary key's tenant prefix, for thousands the trigram index), then the names holding
        # the nearest through the btree of name tokens (0020), never a bitmap of every match.
        ({"q": "alphanaem1"}, "relevance", "Scan on asset_name_words_"),
        ({"q": "alphanaem1"}, "relevance", "Index Only Scan using asset_name_tokens_pkey"),
        # Tags and owners alone: the search index's columns of them (0026 dropped their own indexes).
        ({"tags": ["alphatag"]}, "count", "assets_search_doc_filters"),
        ({"owners": ["alphaowner"]}, "count", "assets_search_doc_filters"),
        ({"q": "alphaword", "tags": ["alphatag"]}, "facet", "assets_search_doc_filters"),
        ({"qualified_name_prefix": "pg://alpha/"}, "name", "assets_qn_prefix"),
        ({}, "name", "assets_by_name"),
        ({}, "updated_at", "assets_by_updated"),
    ],
)
async def test_search_plans_use_the_indexes_through_the_app_role(
    database_url: str, client: Any, tenant: Any, other_tenant: Any, filters: dict[str, Any], sort: str, index: str
) -> None:
    await seed(client, tenant, "alpha")
    await seed(client, other_tenant, "omega")
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        # Enough rows that an index is worth it, as in any tenant worth searching.
        for t in (tenant.tenant_id, other_tenant.tenant_id):
            conn.execute(
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, description, tags, owners,"
                " version, created_at, updated_at) SELECT %s, gen_random_uuid(), 'pg://filler/' || i, 'table',"
                " 'filler' || i, 'filler words ' || i, ARRAY['t' || i %% 50], ARRAY['o' || i %% 20], 1,"
                " now() - i * interval '1 minute', now() - i * interval '1 minute' FROM generate_series(1, 5000) i",
                [t],
            )
        conn.execute("ANALYZE assets")
        explain_nested_as_app(conn)
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant.tenant_id])
            if sort == "count":
                plan = plans_of(conn, "SELECT lily_search_count(%s, 1000)", [Jsonb(filters)])
            elif sort == "facet":
                plan = plans_of(conn, "SELECT * FROM lily_search_facets(%s, '{type}', 10, 1000)", [Jsonb(filters)])
            else:
                plan = plans_of(conn, "SELECT * FROM lily_search_page(%s, %s, NULL, 10, 100)", [Jsonb(filters), sort])
            assert index in plan, plan
            assert "Seq Scan on assets" not in plan, plan
            # The contrast: the same text predicate under RLS, as the app role, cannot use the index.
            if "q" in filters and index == "assets_search_doc":
                rls_plan = "\n".join(
                    r["QUERY PLAN"]
                    for r in conn.execute(
                        "EXPLAIN SELECT 1 FROM assets WHERE deleted_at IS NULL"
                        " AND search_doc @@ websearch_to_tsquery('simple', %s)",
                        [filters["q"]],
                    ).fetchall()
                )
                assert "assets_search_doc" not in rls_plan, rls_plan


def test_a_search_page_starts_no_parallel_workers(database_url: str) -> None:
    """Migration 0020: a page reads a bounded number of rows, and eight searches at once on two cores each
    starting workers made the typo fallback's p99 three times longer."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'lily_search_page'").fetchone()
    assert row is not None and "max_parallel_workers_per_gather=0" in row[0], row


@pytest.mark.parametrize("filters", [{"q": "zzskew"}, {"q": "zzskew", "types": ["table"]}], ids=["word", "word+type"])
async def test_a_search_reads_no_other_tenants_words(
    database_url: str, tenant: Any, other_tenant: Any, filters: dict[str, Any]
) -> None:
    """Migration 0027: every word of the search index is its tenant's. Another tenant's 3,000 rows holding a
    word are not read by a search for it in a tenant that has none: the index answers 0 rows. (Under 0012's
    words, the same in every tenant, it decoded the 3,000 postings and the tenant filter threw them away.)"""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        # The searching tenant has rows enough that the index is worth it, none of them with the word.
        for t, word, count in ((other_tenant.tenant_id, "zzskew", 3000), (tenant.tenant_id, "filler", 5000)):
            conn.execute(
                "INSERT INTO assets (tenant_id, asset_id, qualified_name, type, name, description, version,"
                " created_at, updated_at) SELECT %s, gen_random_uuid(), 'pg://skew/' || i, 'table', 'skew' || i,"
                " %s || ' everywhere', 1, now(), now() FROM generate_series(1, %s) i",
                [t, word, count],
            )
        conn.execute("ANALYZE assets")
        explain_nested_as_app(conn, analyze=True)
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [tenant.tenant_id])
            plan = plans_of(conn, "SELECT lily_search_count(%s, 1000)", [Jsonb(filters)])
            counted = conn.execute("SELECT lily_search_count(%s, 1000) AS n", [Jsonb(filters)]).fetchone()
        assert counted is not None and counted["n"] == 0
        scans = [line for line in plan.splitlines() if "Index Scan on assets_search_doc_filters" in line]
        assert scans, plan
        assert all(re.search(r"actual [^)]*rows=0(\.0+)? loops", line) for line in scans), plan
        # The tenant that has them finds all 3,000 through the same index.
        conn.execute("RESET ROLE")
        conn.execute(f"SET ROLE {APP_ROLE}")
        with conn.transaction():
            conn.execute("SELECT set_config('lily.tenant_id', %s, true)", [other_tenant.tenant_id])
            counted = conn.execute("SELECT lily_search_count(%s, 5000) AS n", [Jsonb(filters)]).fetchone()
        assert counted is not None and counted["n"] == 3000
