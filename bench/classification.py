"""Classification propagation benchmark: one classification reaching 1,000 downstream columns.

    python bench/classification.py                 # both shapes, 1,000 columns
    python bench/classification.py --columns 5000 --workers 2

It creates a fresh database on the server named by ``--admin-url`` (a superuser) and one tenant, writes
the assets and their column lineage through the log (as the API would), drains it, then appends one
``classification.set`` (``PII.Email`` on ``src.contact``, propagating) and starts the clock. Workers
run in this process; the figure is the time from that append to the commit of the last propagated
classification (the latest ``applied_at`` among the propagation events), and the number of
propagation events (one per downstream asset per lineage step) it took. Shapes:

- ``wide``: 100 tables of 10 columns, every column derived from ``src.contact`` (distance 1);
- ``deep``: 10 tables of 10 columns derived from ``src.contact`` (distance 1), then 100 tables of 9
  columns, each column derived from one of those 100 (distance 2).

Then the removal at the source, timed the same way (every one of the 1,000 columns loses it). Figures
are printed, never asserted.
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
from lily.domain.assets import asset_id_for
from lily.domain.events import (
    ASSET_UPSERT,
    CLASSIFICATION_REMOVE,
    CLASSIFICATION_SET,
    LINEAGE_UPSERT,
    NewEvent,
)
from lily.pipeline.runner import build_pipeline
from lily.pipeline.worker import Worker
from lily.store import log as store_log
from lily.store.db import Database
from lily.store.migrate import migrate

TENANT = "bench"
SOURCE = "pg://bench/s.src"


def with_dbname(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def table(qn: str, columns: list[str]) -> NewEvent:
    payload = {"qualified_name": qn, "type": "table", "attributes": {"columns": [{"name": c} for c in columns]}}
    return NewEvent(TENANT, qn, ASSET_UPSERT, payload, "bench", source="bench")


def derive(up: str, down: str, mappings: dict[str, str]) -> NewEvent:
    payload = {
        "upstreams": [up],
        "downstreams": [down],
        "process": None,
        "column_mappings": [
            {"downstream": down, "column": d, "upstreams": [{"asset": up, "column": u}], "transformation": None}
            for d, u in mappings.items()
        ],
    }
    return NewEvent(TENANT, down, LINEAGE_UPSERT, payload, "bench", source="bench")


def shape(name: str, total: int) -> tuple[list[NewEvent], list[NewEvent]]:
    """(assets, lineage) reaching ``total`` downstream columns."""
    assets = [table(SOURCE, ["id", "contact"])]
    lineage: list[NewEvent] = []
    if name == "wide":
        for t in range(total // 10):
            qn = f"pg://bench/w.t{t}"
            cols = [f"c{i}" for i in range(10)]
            assets.append(table(qn, cols))
            lineage.append(derive(SOURCE, qn, dict.fromkeys(cols, "contact")))
        return assets, lineage
    first = max(1, total // 100)  # tables at distance 1, 10 columns each
    mids = []
    for t in range(first):
        qn = f"pg://bench/d1.t{t}"
        cols = [f"c{i}" for i in range(10)]
        assets.append(table(qn, cols))
        lineage.append(derive(SOURCE, qn, dict.fromkeys(cols, "contact")))
        mids += [(qn, c) for c in cols]
    left = total - first * 10
    per = 9
    for t, (up, up_col) in enumerate(mids):
        if left <= 0:
            break
        n = min(per, left)
        qn = f"pg://bench/d2.t{t}"
        cols = [f"c{i}" for i in range(n)]
        assets.append(table(qn, cols))
        lineage.append(derive(up, qn, dict.fromkeys(cols, up_col)))
        left -= n
    return assets, lineage


async def drain(workers: list[Worker], db: Database) -> None:
    while True:
        moved = sum(await asyncio.gather(*(w.drain_once() for w in workers)))
        if not moved:
            async with db.system() as conn:
                if sum(int(r["lag"]) for r in await store_log.lag(conn)) == 0:
                    return
            await asyncio.sleep(0.005)


async def append(db: Database, settings: Settings, events: list[NewEvent]) -> None:
    for i in range(0, len(events), 500):
        async with db.tenant(TENANT) as conn:
            await store_log.append(conn, events[i : i + 500], settings.partitions)


async def timed(db: Database, settings: Settings, workers: list[Worker], event: NewEvent) -> tuple[float, int, float]:
    """(seconds from the append to the last propagation step applied, propagation events, drain seconds)."""
    async with db.tenant(TENANT) as conn:
        cur = await conn.execute("SELECT coalesce(max(seq), 0) AS s FROM events")
        row = await cur.fetchone()
    started = time.monotonic()
    await append(db, settings, [event])
    await drain(workers, db)
    drained = time.monotonic() - started
    async with db.tenant(TENANT) as conn:
        cur = await conn.execute(
            "SELECT count(*) AS n, extract(epoch FROM max(applied_at) - (SELECT accepted_at FROM events"
            " WHERE event_id = %s)) AS s FROM events WHERE source = 'propagation' AND accepted_at >="
            " (SELECT accepted_at FROM events WHERE event_id = %s)",
            [event.event_id, event.event_id],
        )
        stats = await cur.fetchone()
    assert stats is not None and row is not None
    return float(stats["s"] or 0.0), int(stats["n"]), drained


async def run(args: argparse.Namespace, url: str, name: str) -> None:
    settings = Settings(database_url=url, partitions=args.partitions, hooks="", max_attempts=3)
    db = Database(url, min_size=1, max_size=4 + args.workers)
    await db.open()
    try:
        await admin.create_tenant(db, TENANT)
        assets, lineage = shape(name, args.columns)
        pipeline = build_pipeline(settings)
        workers = [Worker(db, settings, pipeline, name=f"bench-{i}") for i in range(args.workers)]
        await append(db, settings, assets)
        await drain(workers, db)
        await append(db, settings, lineage)
        await drain(workers, db)
        source_id = str(asset_id_for(TENANT, SOURCE))
        payload: dict[str, Any] = {
            "asset_id": source_id,
            "column": "contact",
            "classifications": ["PII.Email"],
            "propagate": True,
            "source": "manual",
            "confidence": 1.0,
        }
        classified = NewEvent(TENANT, SOURCE, CLASSIFICATION_SET, payload, "bench")
        seconds, steps, drained = await timed(db, settings, workers, classified)
        async with db.tenant(TENANT) as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM classifications WHERE source = 'propagated' AND classification = 'PII.Email'"
            )
            reached = (await cur.fetchone() or {"n": 0})["n"]
        print(
            f"classification [{name}]: PII.Email on {SOURCE}.contact reached {reached:,} downstream columns"
            f" ({len(assets) - 1} assets, {steps} propagation events) in {seconds * 1000:,.0f} ms"
            f" (change → last propagated classification applied; drained in {drained * 1000:,.0f} ms,"
            f" {args.workers} worker(s))"
        )
        removal = {"asset_id": source_id, "column": "contact", "classification": "PII.Email"}
        removed = NewEvent(TENANT, SOURCE, CLASSIFICATION_REMOVE, removal, "bench")
        seconds, steps, drained = await timed(db, settings, workers, removed)
        async with db.tenant(TENANT) as conn:
            cur = await conn.execute("SELECT count(*) AS n FROM classifications WHERE source = 'propagated'")
            left = (await cur.fetchone() or {"n": 0})["n"]
        print(
            f"classification [{name}]: removal at the source retracted it in {seconds * 1000:,.0f} ms"
            f" ({steps} retraction events; {left} propagated rows left)"
        )
    finally:
        await db.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--admin-url", default=os.environ.get("LILY_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    p.add_argument("--columns", type=int, default=1000)
    p.add_argument("--shapes", default="wide,deep")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=32)
    args = p.parse_args()
    for name in args.shapes.split(","):
        db_name = f"lily_bench_classification_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {db_name}")
        url = with_dbname(args.admin_url, db_name)
        try:
            migrate(url, partitions=args.partitions)
            asyncio.run(run(args, url, name))
        finally:
            with psycopg.connect(args.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {db_name} WITH (FORCE)")


if __name__ == "__main__":
    main()
