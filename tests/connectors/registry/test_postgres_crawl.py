"""The ``postgres`` crawler against a real source database on the test server: what it records, exact
counts across crawls, no versions for unchanged objects, soft-deleted drops, the fail-safe, view
lineage at column level, and meeting OpenLineage on one asset."""

from __future__ import annotations

from typing import Any

from lily.domain.assets import asset_id_for
from tests.connectors.registry.conftest import Source, crawl, settle

SHOP = """
CREATE SCHEMA shop;
COMMENT ON SCHEMA shop IS 'the web shop';
CREATE TABLE shop.customers (
    id bigint PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE
);
COMMENT ON TABLE shop.customers IS 'people who buy';
COMMENT ON COLUMN shop.customers.email IS 'where receipts go';
CREATE TABLE shop.orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES shop.customers (id),
    amount numeric(10, 2) NOT NULL DEFAULT 0,
    note varchar(200)
);
CREATE VIEW shop.customer_totals AS
    SELECT c.name AS customer, sum(o.amount) AS total, count(*) AS orders
    FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id GROUP BY c.name;
CREATE MATERIALIZED VIEW shop.big_orders AS SELECT id, amount * 2 AS doubled FROM shop.orders WHERE amount > 100;
CREATE TABLE shop.audit_tmp (id int);
"""


def ns(source: Source) -> str:
    return f"postgres://{source.host}:{source.port}/{source.database}"


async def asset(app: Any, tenant_id: str, qualified_name: str) -> dict[str, Any] | None:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute(
            "SELECT asset_id, type, name, description, attributes, version, deleted_at, source, has_active_source"
            " FROM assets WHERE qualified_name = %s",
            [qualified_name],
        )
        return await cur.fetchone()


async def version_count(app: Any, tenant_id: str) -> int:
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute("SELECT count(*) AS n FROM asset_versions")
        row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def column_lineage(app: Any, tenant_id: str, downstream: str) -> set[tuple[str, str, str]]:
    """(downstream column, upstream asset, upstream column) of every column mapping into ``downstream``."""
    async with app.state.runtime.db.tenant(tenant_id) as conn:
        cur = await conn.execute(
            "SELECT c.downstream_column, u.qualified_name AS up, c.upstream_column FROM column_lineage c"
            " JOIN lineage_edges e USING (tenant_id, edge_id) JOIN assets u ON u.asset_id = e.upstream_id"
            " JOIN assets d ON d.asset_id = e.downstream_id WHERE d.qualified_name = %s",
            [downstream],
        )
        return {(r["downstream_column"], r["up"], r["upstream_column"]) for r in await cur.fetchall()}


async def test_crawl_change_crawl(client: Any, app: Any, polls: Any, tenant: Any, source_pg: Source, registered: Any):
    source_pg.execute(SHOP)
    doc = await registered("postgres", {"dsn": source_pg.dsn, "include_schemas": ["shop"]})
    cid = doc["connector_id"]

    first = await crawl(client, app, polls, tenant, cid)
    assert first["state"] == "succeeded", first
    # shop, customers, orders, customer_totals, big_orders, audit_tmp
    assert (first["seen"], first["created"], first["updated"], first["unchanged"], first["removed"]) == (6, 6, 0, 0, 0)

    base = ns(source_pg)
    schema = await asset(app, tenant.tenant_id, f"{base}.shop")
    assert schema is not None and schema["type"] == "schema" and schema["description"] == "the web shop"
    customers = await asset(app, tenant.tenant_id, f"{base}.shop.customers")
    assert customers is not None
    assert customers["type"] == "table" and customers["description"] == "people who buy"
    assert customers["source"] == f"connector:{cid}" and customers["has_active_source"] is True
    cols = {c["name"]: c for c in customers["attributes"]["columns"]}
    assert [c["name"] for c in customers["attributes"]["columns"]] == ["id", "name", "email"]
    assert cols["id"] == {
        "name": "id",
        "type": "bigint",
        "description": None,
        "nullable": False,
        "default": None,
        "position": 1,
        "primary_key": True,
    }
    assert cols["email"]["description"] == "where receipts go" and cols["email"]["nullable"] is True
    pg = customers["attributes"]["postgres"]
    assert pg["primary_key"] == ["id"] and pg["unique"][0]["columns"] == ["email"]
    orders = await asset(app, tenant.tenant_id, f"{base}.shop.orders")
    assert orders is not None
    ocols = {c["name"]: c for c in orders["attributes"]["columns"]}
    assert ocols["amount"]["type"] == "numeric(10,2)" and ocols["amount"]["default"] == "0"
    assert ocols["note"]["type"] == "character varying(200)"
    (fk,) = orders["attributes"]["postgres"]["foreign_keys"]
    assert fk["columns"] == ["customer_id"] and fk["references"] == f"{base}.shop.customers"
    assert fk["referenced_columns"] == ["id"]
    view = await asset(app, tenant.tenant_id, f"{base}.shop.customer_totals")
    matview = await asset(app, tenant.tenant_id, f"{base}.shop.big_orders")
    assert view is not None and view["type"] == "view"
    assert matview is not None and matview["type"] == "materialized_view"

    # View lineage, column by column (count(*) reads no column: no mapping for it).
    assert await column_lineage(app, tenant.tenant_id, f"{base}.shop.customer_totals") == {
        ("customer", f"{base}.shop.customers", "name"),
        ("total", f"{base}.shop.orders", "amount"),
    }
    assert await column_lineage(app, tenant.tenant_id, f"{base}.shop.big_orders") == {
        ("id", f"{base}.shop.orders", "id"),
        ("doubled", f"{base}.shop.orders", "amount"),
    }

    # The same source again: nothing new, no event, no version.
    versions = await version_count(app, tenant.tenant_id)
    again = await crawl(client, app, polls, tenant, cid)
    assert (again["seen"], again["created"], again["updated"], again["unchanged"], again["removed"]) == (6, 0, 0, 6, 0)
    assert again["events"] == 0
    assert await version_count(app, tenant.tenant_id) == versions

    # Change it: a column added, a comment changed, a view redefined, a table dropped, one created.
    source_pg.execute(
        """
        ALTER TABLE shop.customers ADD COLUMN city text;
        COMMENT ON TABLE shop.orders IS 'what they bought';
        CREATE OR REPLACE VIEW shop.customer_totals AS
            SELECT c.name AS customer, sum(o.amount) AS total, count(*) AS orders
            FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id GROUP BY c.name, c.city;
        DROP TABLE shop.audit_tmp;
        CREATE TABLE shop.refunds (order_id bigint REFERENCES shop.orders (id), amount numeric);
        """
    )
    third = await crawl(client, app, polls, tenant, cid)
    assert (third["seen"], third["created"], third["updated"], third["unchanged"], third["removed"]) == (6, 1, 3, 2, 1)
    customers = await asset(app, tenant.tenant_id, f"{base}.shop.customers")
    assert customers is not None and [c["name"] for c in customers["attributes"]["columns"]][-1] == "city"
    orders = await asset(app, tenant.tenant_id, f"{base}.shop.orders")
    assert orders is not None and orders["description"] == "what they bought"
    dropped = await asset(app, tenant.tenant_id, f"{base}.shop.audit_tmp")
    assert dropped is not None and dropped["deleted_at"] is not None  # soft-deleted, history kept
    refunds = await asset(app, tenant.tenant_id, f"{base}.shop.refunds")
    assert refunds is not None and refunds["deleted_at"] is None
    # The redefined view still maps its columns (old edges replaced, not piled up).
    assert await column_lineage(app, tenant.tenant_id, f"{base}.shop.customer_totals") == {
        ("customer", f"{base}.shop.customers", "name"),
        ("total", f"{base}.shop.orders", "amount"),
    }


async def test_fail_safe_holds_when_most_of_a_schema_vanishes(
    client: Any, app: Any, polls: Any, tenant: Any, source_pg: Source, registered: Any
):
    source_pg.execute("CREATE SCHEMA big;" + "".join(f"CREATE TABLE big.t{i} (id int);" for i in range(30)))
    doc = await registered("postgres", {"dsn": source_pg.dsn, "include_schemas": ["big"]})
    cid = doc["connector_id"]
    first = await crawl(client, app, polls, tenant, cid)
    assert first["created"] == 31

    source_pg.execute("".join(f"DROP TABLE big.t{i};" for i in range(25)))
    held = await crawl(client, app, polls, tenant, cid)
    assert held["state"] == "succeeded"
    assert held["removed"] == 0 and held["unchanged"] == 6
    assert "fail-safe" in held["detail"]["removal_held"] and held["detail"]["stale"] == 25
    assert any("fail-safe" in e for e in held["errors"])
    still = await asset(app, tenant.tenant_id, f"{ns(source_pg)}.big.t0")
    assert still is not None and still["deleted_at"] is None

    # A few more gone stays under the minimum count: removed at once.
    source_pg.execute("CREATE SCHEMA small;" + "".join(f"CREATE TABLE small.s{i} (id int);" for i in range(5)))
    doc = await registered("postgres", {"dsn": source_pg.dsn, "include_schemas": ["small"]})
    await crawl(client, app, polls, tenant, doc["connector_id"])
    source_pg.execute("DROP TABLE small.s0; DROP TABLE small.s1; DROP TABLE small.s2")
    small = await crawl(client, app, polls, tenant, doc["connector_id"])
    assert small["removed"] == 3 and "removal_held" not in small["detail"]

    # The admin raises the threshold once the drop is known to be real: then the stale tables go.
    r = await client.get(f"/connectors/{tenant.tenant_id}/{cid}", headers=tenant.headers())
    body = r.json()
    body["config"]["max_removal_share"] = 1.0
    r = await client.put(f"/connectors/{tenant.tenant_id}/{cid}", json=body, headers=tenant.headers())
    assert r.status_code == 200, r.text
    released = await crawl(client, app, polls, tenant, cid)
    assert released["removed"] == 25
    gone = await asset(app, tenant.tenant_id, f"{ns(source_pg)}.big.t0")
    assert gone is not None and gone["deleted_at"] is not None


async def test_exclude_patterns(client: Any, app: Any, polls: Any, tenant: Any, source_pg: Source, registered: Any):
    source_pg.execute(SHOP + "CREATE SCHEMA staging; CREATE TABLE staging.raw (x int);")
    doc = await registered("postgres", {"dsn": source_pg.dsn, "exclude": ["shop.audit_*", "staging", "public"]})
    run = await crawl(client, app, polls, tenant, doc["connector_id"])
    assert run["seen"] == 5  # shop + 4 relations; audit_tmp, staging and public left out
    assert await asset(app, tenant.tenant_id, f"{ns(source_pg)}.shop.audit_tmp") is None
    assert await asset(app, tenant.tenant_id, f"{ns(source_pg)}.staging.raw") is None


async def test_a_crawl_and_an_openlineage_event_meet_on_one_asset(
    client: Any, app: Any, polls: Any, tenant: Any, source_pg: Source, registered: Any
):
    source_pg.execute(SHOP)
    doc = await registered("postgres", {"dsn": source_pg.dsn, "include_schemas": ["shop"]})
    await crawl(client, app, polls, tenant, doc["connector_id"])
    namespace = f"postgres://{source_pg.host}:{source_pg.port}"
    name = f"{source_pg.database}.shop.customers"
    event = {
        "eventType": "COMPLETE",
        "eventTime": "2026-01-01T00:00:00Z",
        "producer": "https://example.com/test",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/definitions/RunEvent",
        "run": {"runId": "0190a6b0-0000-7000-8000-000000000001"},
        "job": {"namespace": "etl", "name": "load_customers"},
        "inputs": [],
        "outputs": [{"namespace": namespace, "name": name}],
    }
    r = await client.post("http://lily.test/api/v1/lineage", json=event, headers=tenant.headers("editor"))
    assert r.status_code in (200, 201), r.text
    await settle(app.state.runtime.db, tenant.tenant_id)
    qualified = f"{namespace}/{name}"
    async with app.state.runtime.db.tenant(tenant.tenant_id) as conn:
        cur = await conn.execute("SELECT asset_id, attributes FROM assets WHERE qualified_name LIKE %s", [f"%{name}"])
        rows = await cur.fetchall()
    assert len(rows) == 1  # one asset, whoever wrote it
    assert rows[0]["asset_id"] == asset_id_for(tenant.tenant_id, qualified)
    assert "columns" in rows[0]["attributes"]  # the crawl's columns are still there
    assert await column_lineage(app, tenant.tenant_id, f"{namespace}/etl") == set()
