"""Search filters that only match assets the caller may not read (migration 0017): the answer is the
same as the read rule's, and it comes from an empty plan instead of a walk of the whole tenant."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lily.store.db import APP_ROLE

from ..store.test_search_isolation import plans_of
from .helpers import create

ASSETS = {
    "fin_a": {"qualified_name": "pg://h/db.fin.a", "type": "table", "tags": ["finance"]},
    "fin_b": {"qualified_name": "pg://h/db.fin.b", "type": "view", "tags": ["finance", "pii"]},
    "pub_c": {"qualified_name": "pg://h/db.pub.c", "type": "table", "tags": ["pii"]},
    "pub_d": {"qualified_name": "pg://h/db.pub.d", "type": "view", "tags": []},
}
# Viewers may not read what is tagged pii, nor views under db.pub (a denial of two criteria).
POLICIES = [
    {"resources": {"tags": ["pii"]}},
    {"resources": {"types": ["view"], "qualified_name_prefix": "pg://h/db.pub."}},
]
HIDDEN = {"fin_b", "pub_c", "pub_d"}

# (search parameters, the assets they match before any policy, whether the filters alone contradict a denial)
CASES = [
    ({"tag": "pii"}, {"fin_b", "pub_c"}, True),
    ({"tag": ["finance", "pii"]}, {"fin_b"}, True),
    ({"type": "view", "qualified_name_prefix": "pg://h/db.pub."}, {"pub_d"}, True),
    ({"type": "view", "qualified_name_prefix": "pg://h/db.pub.d"}, {"pub_d"}, True),
    ({"qualified_name": "pg://h/db.pub.d", "type": "view"}, {"pub_d"}, True),
    # Not implied by the filters alone (a narrower or different selection): the read rule decides row by row.
    ({"tag": "finance"}, {"fin_a", "fin_b"}, False),
    ({"type": "view"}, {"fin_b", "pub_d"}, False),
    ({"qualified_name_prefix": "pg://h/db.pub."}, {"pub_c", "pub_d"}, False),
    ({"qualified_name_prefix": "pg://h/db."}, set(ASSETS), False),
    ({"type": ["view", "table"], "qualified_name_prefix": "pg://h/db.pub."}, {"pub_c", "pub_d"}, False),
    ({"type": "table"}, {"fin_a", "pub_c"}, False),
]


@pytest.fixture
async def seeded(client: Any, tenant: Any) -> dict[str, str]:
    ids = {}
    for label, fields in ASSETS.items():
        ids[label] = (await create(client, tenant.headers("editor"), **fields))["asset_id"]
    for i, p in enumerate(POLICIES):
        body = {"name": f"p{i}", "effect": "deny", "actions": ["read"], "principals": ["role:viewer"], **p}
        r = await client.post("/metadata/access-control", json=body, headers=tenant.headers("steward"))
        assert r.status_code == 201, r.text
    return ids


@pytest.mark.parametrize(("params", "matching", "contradicts"), CASES, ids=[str(c[0]) for c in CASES])
async def test_pages_totals_and_facets_are_the_read_rules(
    client: Any, tenant: Any, seeded: dict[str, str], params: dict[str, Any], matching: set[str], contradicts: bool
) -> None:
    names = {v: k for k, v in seeded.items()}
    for role, visible in (("viewer", matching - HIDDEN), ("admin", matching)):
        for sort in ("name", "updated_at"):
            query = {**params, "sort": sort, "total": "true", "facets": "type,tag"}
            r = await client.get("/metadata/search", params=query, headers=tenant.headers(role))
            assert r.status_code == 200, r.text
            body = r.json()
            assert {names[a["asset_id"]] for a in body["items"]} == visible, (role, sort)
            assert body["total"] == len(visible) and body["total_exact"], (role, sort)
            types = {v["value"]: v["count"] for v in body["facets"]["type"]}
            assert types == dict(Counter(ASSETS[a]["type"] for a in visible)), (role, sort)
    if contradicts:
        assert not matching - HIDDEN  # the cases say so: a contradiction hides every match


def where_of(conn: psycopg.Connection[dict[str, Any]], filters: dict[str, Any]) -> str:
    row = conn.execute("SELECT lily_search_where(%s) AS w", [Jsonb(filters)]).fetchone()
    assert row is not None
    return str(row["w"])


def as_filters(params: dict[str, Any]) -> dict[str, Any]:
    """The search parameters as the filter document the API hands the search functions."""
    plural = {"tag": "tags", "type": "types"}
    return {plural.get(k, k): ([v] if isinstance(v, str) else v) if k in plural else v for k, v in params.items()}


async def test_a_contradicted_filter_plans_nothing_and_others_keep_the_rule(
    database_url: str, client: Any, tenant: Any, seeded: dict[str, str]
) -> None:
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("LOAD 'auto_explain'")
        conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            " SET client_min_messages = log"
        )
        for params, _, contradicts in CASES:
            filters = as_filters(params)
            for role, names in (("viewer", "{everyone,role:viewer}"), ("admin", "{everyone,role:admin}")):
                with conn.transaction():
                    conn.execute(
                        "SELECT set_config('lily.tenant_id', %s, true), set_config('lily.access_role', %s, true),"
                        " set_config('lily.access_names', %s, true)",
                        [tenant.tenant_id, role, names],
                    )
                    w = where_of(conn, filters)
                    assert w.endswith(" AND false") == (contradicts and role == "viewer"), (params, role, w)
                    if role == "viewer":
                        assert ("NOT (" in w) != contradicts, w  # the read rule, unless nothing can pass it
                    if contradicts and role == "viewer":
                        conn.execute(f"SET LOCAL ROLE {APP_ROLE}")
                        plan = plans_of(
                            conn, "SELECT * FROM lily_search_page(%s, 'name', NULL, 10, 100)", [Jsonb(filters)]
                        )
                        assert "One-Time Filter: false" in plan, plan
                        assert not re.search(r"Scan (using \w+ )?on assets ", plan), plan  # no row of assets read


async def test_the_denials_kept_per_connection_follow_a_policy_change(
    database_url: str, client: Any, tenant: Any, seeded: dict[str, str]
) -> None:
    viewer = "{everyone,role:viewer}"
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as conn:

        def where(filters: dict[str, Any]) -> str:
            with conn.transaction():
                conn.execute(
                    "SELECT set_config('lily.tenant_id', %s, true), set_config('lily.access_role', 'viewer', true),"
                    " set_config('lily.access_names', %s, true)",
                    [tenant.tenant_id, viewer],
                )
                return where_of(conn, filters)

        assert where({"tags": ["pii"]}).endswith(" AND false")
        assert where({"tags": ["pii"]}).endswith(" AND false")  # now from this connection's copy
        # Another connection (the API's) lifts the pii denial: this connection's next search sees it.
        h = tenant.headers("steward")
        listed = (await client.get("/metadata/access-control/policies", headers=h)).json()["items"]
        pii = next(p for p in listed if p["resources"].get("tags") == ["pii"])
        r = await client.delete(f"/metadata/access-control/policies/{pii['policy_id']}", headers=h)
        assert r.status_code == 204, r.text
        assert not where({"tags": ["pii"]}).endswith(" AND false")
        r = await client.get("/metadata/search", params={"tag": "pii"}, headers=tenant.headers("viewer"))
        assert {a["qualified_name"] for a in r.json()["items"]} == {"pg://h/db.fin.b", "pg://h/db.pub.c"}
