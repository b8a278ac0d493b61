"""The feed's order under concurrent writers: no gaps, no duplicates, a late commit never skipped.

Writers here are transactions of their own on their own connections, inserting change events directly
(as the worker does, in the transaction that applies a change); the reader is the feed itself.
The test server may be shared: any transaction anywhere on it holds the horizon back for a moment,
which delays rows (never loses them), so reads poll with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from lily import admin
from lily.changes import feed
from lily.changes.waker import ChangeWaker
from lily.domain.changes import ChangeEvent
from lily.store import changes as store
from lily.store.db import Database

TENANT = "acme"


def event(label: str, tenant_id: str = TENANT) -> ChangeEvent:
    return ChangeEvent(
        id=uuid.uuid4(),
        type="asset.updated",
        tenant_id=tenant_id,
        actor="test",
        occurred_at=datetime.now(UTC),
        qualified_name=label,
    )


async def read_until(
    db: Database, cursor: feed.Position | None, count: int, timeout: float = 20.0
) -> tuple[list[dict[str, Any]], feed.Position]:
    """Pages from ``cursor`` until ``count`` rows came, then one more read that must find nothing."""
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(rows) < count:
        assert time.monotonic() < deadline, f"{len(rows)} of {count} rows"
        page = await feed.read(db, None, TENANT, cursor, types=None, limit=7, wait=0)
        rows += page.rows
        cursor = page.next
        if not page.rows:
            await asyncio.sleep(0.01)  # polling the feed's state, bounded by the deadline above
    page = await feed.read(db, None, TENANT, cursor, types=None, limit=100, wait=0)
    assert page.rows == []
    return rows, cursor


async def test_a_transaction_that_commits_late_is_not_skipped(db: Database) -> None:
    await admin.create_tenant(db, TENANT)
    early_may_commit = asyncio.Event()
    early_has_written = asyncio.Event()

    async def early() -> None:
        # Takes its transaction id first (by writing), commits last.
        async with db.tenant(TENANT) as conn:
            await store.insert(conn, [event("early")])
            early_has_written.set()
            await early_may_commit.wait()

    task = asyncio.create_task(early())
    await early_has_written.wait()
    async with db.tenant(TENANT) as conn:
        await store.insert(conn, [event("late-1"), event("late-2")])
    # The later transaction is committed, but the earlier one still runs: the feed serves nothing yet,
    # however often it is read (a feed ordered by commit alone would serve late-1, late-2 and move on).
    for _ in range(5):
        page = await feed.read(db, None, TENANT, None, types=None, limit=100, wait=0)
        assert page.rows == []
    early_may_commit.set()
    await task
    rows, _ = await read_until(db, page.next, 3)
    assert [r["qualified_name"] for r in rows] == ["early", "late-1", "late-2"]


async def test_concurrent_writers_no_gaps_no_duplicates_in_commit_order(db: Database, database_url: str) -> None:
    await admin.create_tenant(db, TENANT)
    # Its own pool: eight writers and a reader at once.
    big = Database(database_url, min_size=1, max_size=12, tenant_share=1.0)
    await big.open()
    writers, transactions, per_transaction = 6, 15, 3
    committed: list[str] = []
    rng = random.Random(7)
    served: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for t in range(transactions):
            labels = [f"{w}:{t}:{i}" for i in range(per_transaction)]
            rollback = t % 5 == 4  # every fifth transaction rolls back: its rows must never appear
            try:
                async with big.tenant(TENANT) as conn:
                    await store.insert(conn, [event(label) for label in labels[:1]])
                    await asyncio.sleep(rng.random() * 0.01)  # interleave the writers' transactions
                    await store.insert(conn, [event(label) for label in labels[1:]])
                    if rollback:
                        raise _Rollback
            except _Rollback:
                continue
            committed.extend(labels)

    async def reader() -> None:
        cursor: feed.Position | None = None
        while not done.is_set():
            page = await feed.read(big, None, TENANT, cursor, types=None, limit=10, wait=0)
            served.extend(page.rows)
            cursor = page.next
            if not page.rows:
                await asyncio.sleep(0.005)  # a reader's pace, not synchronisation
        rest, _ = await read_until(big, cursor, len(committed) - len(served))
        served.extend(rest)

    try:
        reading = asyncio.create_task(reader())
        await asyncio.gather(*(writer(w) for w in range(writers)))
        done.set()
        await asyncio.wait_for(reading, 60)
    finally:
        await big.close()

    labels = [r["qualified_name"] for r in served]
    assert len(labels) == len(set(labels)), "an event was served twice"
    assert sorted(labels) == sorted(committed), "an event was skipped, or a rolled-back one served"
    assert len(committed) == writers * (transactions - transactions // 5) * per_transaction
    positions = [(int(r["xid"]), int(r["seq"])) for r in served]
    assert positions == sorted(positions)
    # Each writer's transactions follow each other, so its events come in its own order, and the events
    # of one transaction come together.
    for w in range(writers):
        mine = [label for label in labels if label.startswith(f"{w}:")]
        assert mine == sorted(mine, key=lambda s: tuple(int(p) for p in s.split(":")))
    runs = [label.rsplit(":", 1)[0] for label in labels]
    transactions_seen = [k for i, k in enumerate(runs) if i == 0 or runs[i - 1] != k]
    assert len(transactions_seen) == len(set(transactions_seen)), "a transaction's events were split"


class _Rollback(Exception):
    pass


async def test_the_waker_wakes_only_the_tenant_written_to(db: Database, database_url: str) -> None:
    await admin.create_tenant(db, TENANT)
    await admin.create_tenant(db, "globex")
    waker = ChangeWaker(database_url)
    try:
        assert await waker.ready()
        ours, theirs = waker.generation(TENANT), waker.generation("globex")
        waiting = asyncio.create_task(waker.wait(TENANT, ours, 20))
        async with db.tenant("globex") as conn:
            await store.insert(conn, [event("x", "globex")])
        assert await waker.wait("globex", theirs, 20)
        assert not waiting.done()
        async with db.tenant(TENANT) as conn:
            await store.insert(conn, [event("y")])
        assert await asyncio.wait_for(waiting, 20)
        # Nothing more comes: a wait on the current generation times out, answering False.
        assert await waker.wait(TENANT, waker.generation(TENANT), 0.05) is False
    finally:
        await waker.stop()


async def test_a_long_transaction_of_another_database_does_not_hold_the_feed_back(
    db: Database, pg_admin_url: str
) -> None:
    await admin.create_tenant(db, TENANT)
    # A write transaction in another database on the same server, left open: it cannot write our rows.
    async with await psycopg.AsyncConnection.connect(pg_admin_url) as other:
        cur = await other.execute("SELECT pg_current_xact_id()::text")
        row = await cur.fetchone()
        assert row is not None and int(row[0]) > 0
        async with db.tenant(TENANT) as conn:
            await store.insert(conn, [event("served-while-the-other-runs")])
        rows, _ = await read_until(db, None, 1)
        assert [r["qualified_name"] for r in rows] == ["served-while-the-other-runs"]
        assert int(rows[0]["xid"]) > int(row[0])  # the row's transaction began after the other one
        await other.rollback()
