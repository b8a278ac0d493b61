"""Pipeline benchmark: how fast one in-process worker drains the event log, without the API in the way.

    python bench/pipeline.py                       # 20,000 clean events over 2,000 subjects
    python bench/pipeline.py --events 50000 --poison 0.01 --tenants 4

It creates a fresh database on the server named by ``--admin-url`` (a superuser), appends the events
straight to the log (as the API's writer does, in chunks of 500), then starts one worker and prints the
events/s it drains at, and the accept→apply p50/p99 read from the log. ``--poison`` makes that share
of the events fail at apply on every attempt (an asset type of 1,000 random 4-byte characters: a 4 kB
index row); ``--tenants`` spreads the events over several tenants. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lily import admin
from lily.config import Settings
from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.pipeline.runner import build_pipeline
from lily.pipeline.worker import Worker
from lily.store import log as store_log
from lily.store.db import Database
from lily.store.migrate import migrate


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def make_events(args: argparse.Namespace) -> list[NewEvent]:
    rng = random.Random(1)
    poison = "".join(chr(0x20000 + rng.randrange(40_000)) for _ in range(1000))
    out = []
    for i in range(args.events):
        tenant = f"bench{i % args.tenants}"
        subject = f"pg://bench/s.t{rng.randrange(args.subjects)}"
        type_ = poison if rng.random() < args.poison else "table"
        payload = {"qualified_name": subject, "type": type_, "attributes": {"i": i}}
        out.append(NewEvent(tenant, subject, ASSET_UPSERT, payload, "bench"))
    return out


async def run(args: argparse.Namespace, url: str) -> None:
    settings = Settings(database_url=url, partitions=args.partitions, hooks="", max_attempts=3)
    db = Database(url, min_size=1, max_size=4)
    await db.open()
    try:
        for t in range(args.tenants):
            await admin.create_tenant(db, f"bench{t}")
        events = make_events(args)
        for i in range(0, len(events), 500):
            chunk = events[i : i + 500]
            by_tenant: dict[str, list[NewEvent]] = {}
            for e in chunk:
                by_tenant.setdefault(e.tenant_id, []).append(e)
            for tenant, group in by_tenant.items():
                async with db.tenant(tenant) as conn:
                    await store_log.append(conn, group, settings.partitions)
        worker = Worker(db, settings, build_pipeline(settings))
        started = time.monotonic()
        while True:  # until nothing is left undecided (held events count as lag)
            if not await worker.drain_once():
                async with db.system() as conn:
                    if sum(int(r["lag"]) for r in await store_log.lag(conn)) == 0:
                        break
                await asyncio.sleep(0.01)  # only retries are due later: as the worker's LISTEN would
        elapsed = time.monotonic() - started
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute(
                "SELECT status, count(*) FROM events GROUP BY status ORDER BY status",
            )
            statuses: dict[str, Any] = dict(await cur.fetchall())
            cur = await conn.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY s), percentile_cont(0.99) WITHIN GROUP (ORDER BY s)"
                " FROM (SELECT extract(epoch FROM applied_at - accepted_at) AS s FROM events"
                " WHERE status = 'applied') x"
            )
            p50, p99 = await cur.fetchone() or (0, 0)
        print(
            f"pipeline: {len(events):,} events ({args.poison:.1%} poison, {args.tenants} tenants, {args.partitions}"
            f" partitions), one worker: drained in {elapsed:.2f}s = {len(events) / elapsed:,.0f} events/s;"
            f" {statuses}; accept→apply p50 {p50:.2f}s, p99 {p99:.2f}s (from the first append)"
        )
    finally:
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--admin-url", default=os.environ.get("LILY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--events", type=int, default=20_000)
    p.add_argument("--subjects", type=int, default=2_000)
    p.add_argument("--tenants", type=int, default=1)
    p.add_argument("--poison", type=float, default=0.0)
    p.add_argument("--partitions", type=int, default=32)
    args = p.parse_args()
    name = f"lily_bench_pipeline_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = with_dbname(args.admin_url, name)
    try:
        migrate(url, partitions=args.partitions)
        asyncio.run(run(args, url))
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


if __name__ == "__main__":
    main()
