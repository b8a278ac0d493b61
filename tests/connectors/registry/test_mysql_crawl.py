"""The ``mysql`` crawler against the machine's MariaDB (127.0.0.1:3306, root): a database the test
creates, crawled, changed and crawled again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from tests.connectors.registry.conftest import crawl
from tests.connectors.registry.test_postgres_crawl import asset, column_lineage, version_count

HOST, PORT = "127.0.0.1", 3306


def _execute(statements: list[str], database: str | None = None) -> None:
    conn = pymysql.connect(host=HOST, port=PORT, user="root", password="", database=database, autocommit=True)
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


@pytest.fixture
def mysql_db() -> Iterator[str]:
    try:
        _execute(["SELECT 1"])
    except pymysql.err.OperationalError as exc:
        pytest.skip(f"no MariaDB/MySQL on {HOST}:{PORT}: {exc}")
    name = f"lily_src_{uuid.uuid4().hex[:8]}"
    _execute([f"CREATE DATABASE {name}"])
    yield name
    _execute([f"DROP DATABASE IF EXISTS {name}"])


SHOP = [
    "CREATE TABLE customers (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL COMMENT 'full name',"
    " email VARCHAR(200) UNIQUE) COMMENT 'people who buy'",
    "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT NOT NULL, amount DECIMAL(10,2) NOT NULL DEFAULT 0,"
    " FOREIGN KEY fk_customer (customer_id) REFERENCES customers (id)) ENGINE=InnoDB",
    "CREATE VIEW customer_totals AS SELECT c.name AS customer, SUM(o.amount) AS total"
    " FROM orders o JOIN customers c ON c.id = o.customer_id GROUP BY c.name",
    "CREATE TABLE scratch (id INT)",
]


async def test_mysql_crawl_change_crawl(
    client: Any, app: Any, polls: Any, tenant: Any, mysql_db: str, registered: Any
) -> None:
    _execute(SHOP, mysql_db)
    doc = await registered("mysql", {"dsn": f"mysql://root:@{HOST}:{PORT}/{mysql_db}"})
    cid = doc["connector_id"]
    first = await crawl(client, app, polls, tenant, cid)
    assert first["state"] == "succeeded", first
    # the database, customers, orders, customer_totals, scratch
    assert (first["seen"], first["created"], first["updated"], first["unchanged"], first["removed"]) == (5, 5, 0, 0, 0)

    base = f"mysql://{HOST}:{PORT}/{mysql_db}"
    database = await asset(app, tenant.tenant_id, base)
    assert database is not None and database["type"] == "database"
    customers = await asset(app, tenant.tenant_id, f"{base}.customers")
    assert customers is not None and customers["type"] == "table" and customers["description"] == "people who buy"
    cols = {c["name"]: c for c in customers["attributes"]["columns"]}
    assert cols["id"]["primary_key"] is True and cols["id"]["nullable"] is False and cols["id"]["type"] == "bigint(20)"
    assert cols["name"]["description"] == "full name" and cols["name"]["position"] == 2
    assert cols["email"]["nullable"] is True
    details = customers["attributes"]["mysql"]
    assert details["primary_key"] == ["id"] and details["unique"][0]["columns"] == ["email"]
    orders = await asset(app, tenant.tenant_id, f"{base}.orders")
    assert orders is not None
    (fk,) = orders["attributes"]["mysql"]["foreign_keys"]
    assert fk["columns"] == ["customer_id"] and fk["references"] == f"{base}.customers"
    assert fk["referenced_columns"] == ["id"]
    assert {c["name"]: c for c in orders["attributes"]["columns"]}["amount"]["default"] in ("0.00", "0")
    view = await asset(app, tenant.tenant_id, f"{base}.customer_totals")
    assert view is not None and view["type"] == "view" and view["description"] is None
    assert await column_lineage(app, tenant.tenant_id, f"{base}.customer_totals") == {
        ("customer", f"{base}.customers", "name"),
        ("total", f"{base}.orders", "amount"),
    }

    versions = await version_count(app, tenant.tenant_id)
    again = await crawl(client, app, polls, tenant, cid)
    assert (again["created"], again["updated"], again["unchanged"], again["removed"], again["events"]) == (
        0,
        0,
        5,
        0,
        0,
    )
    assert await version_count(app, tenant.tenant_id) == versions

    _execute(
        [
            "ALTER TABLE customers ADD COLUMN city VARCHAR(50)",
            "DROP TABLE scratch",
            "CREATE TABLE refunds (order_id BIGINT, amount DECIMAL(10,2))",
        ],
        mysql_db,
    )
    third = await crawl(client, app, polls, tenant, cid)
    assert (third["seen"], third["created"], third["updated"], third["unchanged"], third["removed"]) == (5, 1, 1, 3, 1)
    dropped = await asset(app, tenant.tenant_id, f"{base}.scratch")
    assert dropped is not None and dropped["deleted_at"] is not None
