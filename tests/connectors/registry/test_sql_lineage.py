"""``POST /metadata/lineage/sql``: lineage from SQL statements, dry run and applied, with bad input."""

from __future__ import annotations

from typing import Any

from tests.api.helpers import assert_problem, fields_of
from tests.connectors.registry.conftest import settle
from tests.connectors.registry.test_postgres_crawl import column_lineage

NS = "postgres://warehouse:5432"
SQL = """
INSERT INTO analytics.daily (day, revenue)
SELECT date_trunc('day', o.created_at), sum(o.amount) FROM shop.orders o GROUP BY 1;
CREATE VIEW analytics.big AS SELECT id, amount * 2 AS doubled FROM shop.orders WHERE amount > 100;
SELECT 1;
"""


async def test_dry_run_returns_table_and_column_lineage(client: Any, app: Any, tenant: Any) -> None:
    body = {"sql": SQL, "namespace": NS, "default_database": "dw", "dry_run": True}
    r = await client.post("/metadata/lineage/sql", json=body, headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["applied"] is False and out["event_ids"] == []
    daily, big = out["statements"]
    assert daily["target"] == f"{NS}/dw.analytics.daily" and daily["sources"] == [f"{NS}/dw.shop.orders"]
    assert daily["columns"] == {
        "day": [{"asset": f"{NS}/dw.shop.orders", "column": "created_at"}],
        "revenue": [{"asset": f"{NS}/dw.shop.orders", "column": "amount"}],
    }
    assert big["columns"]["doubled"] == [{"asset": f"{NS}/dw.shop.orders", "column": "amount"}]
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


async def test_applied_through_the_lineage_write_path(client: Any, app: Any, tenant: Any, other_tenant: Any) -> None:
    # Lily knows the columns of shop.orders in this tenant: SELECT * resolves column by column.
    columns = [{"name": "id", "type": "bigint"}, {"name": "amount", "type": "numeric"}]
    for who in (tenant, other_tenant):
        r = await client.post(
            "/metadata",
            json={"qualified_name": f"{NS}/dw.shop.orders", "type": "table", "attributes": {"columns": columns}},
            headers=who.headers("editor"),
        )
        assert r.status_code in (200, 201), r.text
    body = {"sql": "CREATE TABLE dw.shop.copy AS SELECT * FROM dw.shop.orders", "namespace": NS}
    r = await client.post("/metadata/lineage/sql", json=body, headers=tenant.headers("editor"))
    assert r.status_code == 200, r.text
    assert r.json()["applied"] is True and len(r.json()["event_ids"]) == 1
    await settle(app.state.runtime.db, tenant.tenant_id)
    assert await column_lineage(app, tenant.tenant_id, f"{NS}/dw.shop.copy") == {
        ("id", f"{NS}/dw.shop.orders", "id"),
        ("amount", f"{NS}/dw.shop.orders", "amount"),
    }
    # The other tenant got nothing.
    assert await column_lineage(app, other_tenant.tenant_id, f"{NS}/dw.shop.copy") == set()
    async with app.state.runtime.db.tenant(other_tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM lineage_edges")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 0


async def test_a_star_over_unknown_tables_keeps_table_lineage(client: Any, tenant: Any) -> None:
    body = {"sql": "INSERT INTO a.b.c SELECT * FROM a.b.d", "namespace": NS, "dry_run": True}
    r = await client.post("/metadata/lineage/sql", json=body, headers=tenant.headers("editor"))
    (statement,) = r.json()["statements"]
    assert statement["sources"] == [f"{NS}/a.b.d"] and statement["columns"] == {} and statement["note"]


async def test_bad_input(client: Any, tenant: Any) -> None:
    headers = tenant.headers("editor")
    r = await client.post("/metadata/lineage/sql", json={"sql": "SELEC x FRM", "namespace": NS}, headers=headers)
    assert fields_of(assert_problem(r, 422)) == {"sql"}
    r = await client.post("/metadata/lineage/sql", json={"sql": "x" * 600_000, "namespace": NS}, headers=headers)
    assert "sql" in fields_of(assert_problem(r, 422))
    r = await client.post("/metadata/lineage/sql", json={"sql": "select 1", "namespace": "warehouse"}, headers=headers)
    assert "namespace" in fields_of(assert_problem(r, 422))
    body = {"sql": "select 1", "namespace": NS, "dialect": "cobol"}
    assert "dialect" in fields_of(
        assert_problem(await client.post("/metadata/lineage/sql", json=body, headers=headers), 422)
    )
    body = {"sql": "select 1", "namespace": NS, "extra": 1}
    assert "extra" in fields_of(
        assert_problem(await client.post("/metadata/lineage/sql", json=body, headers=headers), 422)
    )
    r = await client.post("/metadata/lineage/sql", json={"sql": SQL, "namespace": NS}, headers=tenant.headers("viewer"))
    assert_problem(r, 403)


async def test_access_policies_apply_as_to_other_lineage_writes(client: Any, app: Any, tenant: Any) -> None:
    # A deny-write on the target and a deny-read on a source: each refuses the whole request, and nothing
    # is appended; a dry run still answers (it writes nothing).
    policies = [
        {"name": "no writes to marts", "effect": "deny", "actions": ["write"], "principals": ["role:editor"],
         "resources": {"qualified_name_prefix": f"{NS}/dw.marts."}},
        {"name": "secret schema", "effect": "deny", "actions": ["read"], "principals": ["role:editor"],
         "resources": {"qualified_name_prefix": f"{NS}/dw.secret."}},
    ]  # fmt: skip
    for policy in policies:
        r = await client.post("/metadata/access-control", json=policy, headers=tenant.headers("steward"))
        assert r.status_code == 201, r.text
    editor = tenant.headers("editor")
    denied = [
        "CREATE TABLE dw.marts.t AS SELECT id FROM dw.shop.orders",
        "CREATE TABLE dw.shop.t AS SELECT id FROM dw.secret.people",
    ]
    for sql in denied:
        r = await client.post("/metadata/lineage/sql", json={"sql": sql, "namespace": NS}, headers=editor)
        assert_problem(r, 403)
    allowed = {"sql": "CREATE TABLE dw.shop.t AS SELECT id FROM dw.shop.orders", "namespace": NS}
    r = await client.post("/metadata/lineage/sql", json=allowed, headers=editor)
    assert r.status_code == 200 and r.json()["applied"] is True, r.text
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM events WHERE kind = 'lineage.upsert'")
        row = await cur.fetchone()
    assert row is not None and row["n"] == 1
