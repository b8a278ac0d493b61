"""Crawl benchmark: the ``postgres`` crawler over a source of 10,000 tables x 20 columns.

    python bench/crawl.py                          # 10,000 tables, 20 columns each, 50 views
    python bench/crawl.py --tables 2000 --apply    # also time the worker applying the crawl's events

It creates two fresh databases on the server named by ``--admin-url`` (a superuser): the source (the
tables are generated in one DDL script, with a comment on every tenth table and a view per 200 tables)
and Lily's. A connector instance is registered and run three times through the real run machinery
(``lily.scheduler.connectors``): the first crawl appends every object to the event log, the second finds
nothing changed (and appends nothing), the third follows 1% of the tables changing. For each it prints
objects/s (objects = schemas + tables + views; columns ride with their table) and where the time went:
reading the catalog and building the objects, or comparing fingerprints and appending events.
``--apply`` also drains the first crawl's events with one in-process worker. Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.config import Settings
from lily.connectors.postgres import crawl as pg_crawl
from lily.connectors.postgres.plugin import PostgresConfig
from lily.crypto import Keyring
from lily.pipeline.runner import build_pipeline
from lily.pipeline.worker import Worker
from lily.plugins import load_plugins
from lily.scheduler.connectors import ConnectorPolls, public_and_sealed
from lily.store import connectors as store
from lily.store import log as store_log
from lily.store.db import Database
from lily.store.migrate import migrate

TENANT = "bench"


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def make_source(url: str, tables: int, columns: int) -> None:
    types = ["bigint", "text", "numeric(12,2)", "timestamptz", "boolean", "varchar(64)", "integer", "jsonb"]
    with psycopg.connect(url, autocommit=True) as conn:
        for start in range(0, tables, 500):
            ddl = [f"CREATE SCHEMA IF NOT EXISTS s{start // 2500};"]
            for i in range(start, min(start + 500, tables)):
                cols = ", ".join(
                    f"c{j} {types[j % len(types)]}{' NOT NULL' if j % 3 == 0 else ''}" for j in range(1, columns)
                )
                ddl.append(f"CREATE TABLE s{i // 2500}.t{i} (id bigint PRIMARY KEY, {cols});")
                if i % 10 == 0:
                    ddl.append(f"COMMENT ON TABLE s{i // 2500}.t{i} IS 'table number {i}';")
                if i % 200 == 199:
                    ddl.append(
                        f"CREATE VIEW s{i // 2500}.v{i} AS SELECT a.id, a.c1, b.c2 FROM s{i // 2500}.t{i} a"
                        f" JOIN s{(i - 1) // 2500}.t{i - 1} b ON b.id = a.id;"
                    )
            conn.execute("\n".join(ddl))


async def timed_crawl(polls: ConnectorPolls, db: Database, settings: Settings) -> float:
    started = time.monotonic()
    async with db.tenant(TENANT) as conn:
        cur = await conn.execute("SELECT connector_id FROM connectors")
        row = await cur.fetchone()
        assert row is not None
        await store.request_run(conn, TENANT, row["connector_id"], "bench")
    assert await polls.start_due(db, settings, wait=True) == 1
    return time.monotonic() - started


async def last_run(db: Database) -> dict[str, Any]:
    async with db.tenant(TENANT) as conn:
        cur = await conn.execute(
            "SELECT state, seen, created, updated, unchanged, removed, events, error FROM connector_runs"
            " ORDER BY created_at DESC LIMIT 1"
        )
        row = await cur.fetchone()
    assert row is not None and row["state"] == "succeeded", row
    return row


async def run(args: argparse.Namespace, lily_url: str, source_url: str) -> None:
    settings = Settings(
        database_url=lily_url,
        partitions=32,
        allow_private_targets=True,
        home=os.path.join(os.environ.get("TMPDIR", "/tmp"), f"lily-bench-{uuid.uuid4().hex[:6]}"),
    )
    db = Database(lily_url, min_size=1, max_size=8)
    await db.open()
    try:
        await admin.create_tenant(db, TENANT)
        src = conninfo_to_dict(source_url)
        config = PostgresConfig.model_validate(
            {
                "dsn": f"postgresql://{src.get('user') or 'postgres'}@{src.get('host') or '127.0.0.1'}:"
                f"{src.get('port') or 5432}/{src['dbname']}",
                "max_removal_share": 1.0,
            }
        )
        public, sealed = public_and_sealed(config, Keyring.from_settings(settings))
        async with db.tenant(TENANT) as conn:
            await store.create(
                conn,
                TENANT,
                name="bench",
                kind="postgres",
                config=public,
                sealed=sealed,
                schedule=None,
                active=True,
                next_run_at=None,
            )
        polls = ConnectorPolls()
        polls._connectors = load_plugins(settings).connectors

        # The crawler alone: catalog read + building the objects.
        class _Ctx:
            source = "connector:bench"

            def check_target(self, host: str, port: int, database: str | None = None) -> list[str]:
                return ["127.0.0.1"] if host in ("localhost", "127.0.0.1") else [host]

        started = time.monotonic()
        result = await pg_crawl.crawl(_Ctx(), config)  # type: ignore[arg-type]
        read = time.monotonic() - started
        objects = len(result.objects or [])
        print(
            f"crawl (read catalog + build objects): {objects:,} objects ({args.tables:,} tables x {args.columns}"
            f" columns) in {read:.2f}s = {objects / read:,.0f} objects/s"
            f" ({args.tables * args.columns / read:,.0f} columns/s)"
        )
        for label in ("first run (everything new)", "second run (nothing changed)"):
            elapsed = await timed_crawl(polls, db, settings)
            r = await last_run(db)
            print(
                f"{label}: {r['seen']:,} objects in {elapsed:.2f}s = {r['seen'] / elapsed:,.0f} objects/s;"
                f" created {r['created']:,}, updated {r['updated']:,}, unchanged {r['unchanged']:,},"
                f" events appended {r['events']:,}"
            )
        with psycopg.connect(source_url, autocommit=True) as conn:
            conn.execute(
                "".join(f"ALTER TABLE s{i // 2500}.t{i} ADD COLUMN extra int;" for i in range(0, args.tables, 100))
            )
        elapsed = await timed_crawl(polls, db, settings)
        r = await last_run(db)
        print(
            f"third run (1% of tables changed): {r['seen']:,} objects in {elapsed:.2f}s ="
            f" {r['seen'] / elapsed:,.0f} objects/s; updated {r['updated']:,}, events appended {r['events']:,}"
        )
        if args.apply:
            worker = Worker(db, settings, build_pipeline(settings))
            started = time.monotonic()
            while True:
                if not await worker.drain_once():
                    async with db.system() as conn:
                        if sum(int(x["lag"]) for x in await store_log.lag(conn)) == 0:
                            break
                    await asyncio.sleep(0.01)
            elapsed = time.monotonic() - started
            async with db.tenant(TENANT) as conn:
                cur = await conn.execute("SELECT count(*) AS n FROM events")
                n = (await cur.fetchone() or {"n": 0})["n"]
            print(f"apply: one worker applied the crawls' {n:,} events in {elapsed:.2f}s = {n / elapsed:,.0f} events/s")
    finally:
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--admin-url", default=os.environ.get("LILY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--tables", type=int, default=10_000)
    p.add_argument("--columns", type=int, default=20)
    p.add_argument("--apply", action="store_true", help="also drain the crawl's events with one worker")
    args = p.parse_args()
    suffix = uuid.uuid4().hex[:8]
    lily_db, source_db = f"lily_bench_crawl_{suffix}", f"lily_bench_source_{suffix}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {lily_db}")
        conn.execute(f"CREATE DATABASE {source_db}")
    lily_url, source_url = with_dbname(args.admin_url, lily_db), with_dbname(args.admin_url, source_db)
    try:
        started = time.monotonic()
        make_source(source_url, args.tables, args.columns)
        print(f"source: {args.tables:,} tables x {args.columns} columns generated in {time.monotonic() - started:.1f}s")
        migrate(lily_url, partitions=32)
        asyncio.run(run(args, lily_url, source_url))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {lily_db} WITH (FORCE)")
            conn.execute(f"DROP DATABASE IF EXISTS {source_db} WITH (FORCE)")


if __name__ == "__main__":
    main()
