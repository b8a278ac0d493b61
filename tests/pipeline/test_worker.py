"""The consumer in-process: partition exclusion, two workers racing, shutdown, resilience."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from lily import admin
from lily.config import Settings
from lily.domain.events import ASSET_UPSERT, LINEAGE_UPSERT, NewEvent, partition_of
from lily.pipeline.runner import build_pipeline
from lily.pipeline.worker import Worker
from lily.store import log as store_log
from lily.store.db import Database

from .support import hold_partition, subjects_in_partition, until

TENANT = "acme"


def upserts(subjects: list[str], rounds: int) -> list[NewEvent]:
    """``rounds`` updates of every subject, interleaved; attribute n counts 1..rounds per subject."""
    return [
        NewEvent(TENANT, s, ASSET_UPSERT, {"qualified_name": s, "type": "table", "attributes": {"n": n}}, "test")
        for n in range(1, rounds + 1)
        for s in subjects
    ]


async def append(db: Database, events: list[NewEvent], settings: Settings) -> None:
    async with db.tenant(TENANT) as conn:
        await store_log.append(conn, events, settings.partitions)


async def backlog(db: Database) -> int:
    async with db.system() as conn:
        return sum(int(r["lag"]) for r in await store_log.lag(conn))


async def versions_by_subject(database_url: str) -> dict[str, list[int]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT a.qualified_name, (v.snapshot->'attributes'->>'n')::int FROM asset_versions v"
            " JOIN assets a USING (tenant_id, asset_id) ORDER BY a.qualified_name, v.version"
        )
        out: dict[str, list[int]] = {}
        for name, n in await cur.fetchall():
            out.setdefault(name, []).append(n)
        return out


@pytest.fixture
async def tenant_db(db: Database) -> Database:
    await admin.create_tenant(db, TENANT)
    return db


async def test_a_held_partition_is_skipped_then_taken(
    tenant_db: Database, settings: Settings, database_url: str
) -> None:
    worker = Worker(tenant_db, settings, build_pipeline(settings))
    subjects = subjects_in_partition(TENANT, 5, settings.partitions, 3, "pg://db/s.x")
    await append(tenant_db, upserts(subjects, 2), settings)
    async with hold_partition(database_url, 5):
        assert await worker.process_partition(5) == 0  # another holder: not ours to touch
        assert await backlog(tenant_db) == 6
    assert await worker.process_partition(5) == 6
    assert await backlog(tenant_db) == 0


async def test_two_workers_racing_apply_every_event_once_in_order(
    tenant_db: Database, settings: Settings, database_url: str
) -> None:
    # Small batches and few partitions: the two workers contend for the same partitions all the time.
    s = settings.model_copy(update={"worker_batch_size": 7})
    subjects = [f"pg://db/s.r{i}" for i in range(40)]
    assert len({partition_of(TENANT, x, s.partitions) for x in subjects}) == s.partitions
    pipeline = build_pipeline(s)
    stop = asyncio.Event()
    second = Database(database_url, min_size=1, max_size=2)
    await second.open()
    try:
        tasks = [
            asyncio.create_task(Worker(db, s, pipeline, name=f"w{i}").run(stop))
            for i, db in enumerate((tenant_db, second))
        ]
        for chunk in range(5):  # append while they consume
            await append(tenant_db, upserts(subjects, 20)[chunk * 160 : (chunk + 1) * 160], s)

        async def drained() -> bool:
            return await backlog(tenant_db) == 0

        await until(drained, timeout=60, what="the backlog to drain")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    finally:
        stop.set()
        await second.close()
    versions = await versions_by_subject(database_url)
    assert versions == {x: list(range(1, 21)) for x in subjects}


async def test_stop_ends_the_worker_between_transactions(
    tenant_db: Database, settings: Settings, database_url: str
) -> None:
    s = settings.model_copy(update={"worker_batch_size": 5})
    await append(tenant_db, upserts([f"pg://db/s.st{i}" for i in range(30)], 10), s)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(tenant_db, s, build_pipeline(s)).run(stop))

    async def some_applied() -> bool:
        return await backlog(tenant_db) < 250

    await until(some_applied, what="some events to be applied")
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        # Each partition is consistent: everything up to its offset decided, everything after untouched.
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE (e.seq <= o.applied_seq) <> (e.status = 'applied'))"
            " FROM events e JOIN log_offsets o USING (partition)"
        )
        assert (await cur.fetchone()) == (0,)
    assert await backlog(tenant_db) > 0  # it did stop before the end


async def test_an_unexpected_error_does_not_end_the_worker(
    tenant_db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store_log.partitions_with_backlog
    calls = {"n": 0}

    async def flaky(conn: Any) -> list[int]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a bug in the consumer")
        return await real(conn)

    monkeypatch.setattr(store_log, "partitions_with_backlog", flaky)
    await append(tenant_db, upserts(["pg://db/s.alive"], 3), settings)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(tenant_db, settings, build_pipeline(settings)).run(stop))
    try:

        async def drained() -> bool:
            return await backlog(tenant_db) == 0

        await until(drained, what="the worker to recover and drain")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    assert calls["n"] >= 2


async def test_one_batch_applies_events_of_different_kinds_in_log_order(
    tenant_db: Database, settings: Settings, database_url: str
) -> None:
    """An upsert, a lineage write naming an upstream nobody wrote yet, then that upstream's own write —
    consumed in one batch: the lineage write creates the placeholder and the write fills it, as the log
    says (applied grouped by kind, both upserts would go first and no placeholder would ever exist)."""
    other, downstream, upstream = subjects_in_partition(TENANT, 2, settings.partitions, 3, "pg://db/s.kinds")
    first, fill = upserts([other, upstream], 1)
    lineage = NewEvent(TENANT, downstream, LINEAGE_UPSERT, {"upstreams": [upstream], "downstreams": [downstream]}, "t")
    await append(tenant_db, [first, lineage, fill], settings)
    worker = Worker(tenant_db, settings, build_pipeline(settings))
    assert await worker.process_partition(2) == 3
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute("SELECT subject, status, result FROM events ORDER BY event_id")
        results = {subject: (status, result) for subject, status, result in await cur.fetchall()}
    assert {status for status, _ in results.values()} == {"applied"}, results
    assert sorted(results[downstream][1]["placeholders"]) == sorted([upstream, downstream]), results
    assert results[upstream][1]["created"] is False and results[upstream][1]["changed"] is True, results


def test_a_busy_pass_lingers_and_a_lone_write_does_not(settings: Settings) -> None:
    s = settings.model_copy(update={"worker_linger_seconds": 0.015, "worker_linger_after_events": 4})
    worker = Worker(Database(s.database_url), s, build_pipeline(s))
    assert [worker.linger_after(n) for n in (0, 1, 3)] == [0.0, 0.0, 0.0]
    assert [worker.linger_after(n) for n in (4, 500)] == [0.015, 0.015]
    off = Worker(Database(s.database_url), s.model_copy(update={"worker_linger_seconds": 0.0}), build_pipeline(s))
    assert off.linger_after(500) == 0.0


async def test_a_linger_ends_when_the_worker_is_stopped(tenant_db: Database, settings: Settings) -> None:
    # A linger far longer than the test may take: stopping must cut it short.
    s = settings.model_copy(update={"worker_linger_seconds": 600.0, "worker_linger_after_events": 1})
    await append(tenant_db, upserts([f"pg://db/s.l{i}" for i in range(5)], 1), s)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(tenant_db, s, build_pipeline(s)).run(stop))

    async def drained() -> bool:
        return await backlog(tenant_db) == 0

    await until(drained, what="the events to be applied")  # the pass that moved them is now lingering
    stop.set()
    await asyncio.wait_for(task, timeout=10)


@pytest.mark.parametrize(("per_transaction", "groups"), [(None, [6]), (4, [4, 2])])
async def test_a_pass_applies_its_partitions_in_as_few_transactions_as_configured(
    tenant_db: Database, settings: Settings, per_transaction: int | None, groups: list[int]
) -> None:
    s = settings.model_copy(update={"worker_partitions_per_transaction": per_transaction})
    subjects = [subjects_in_partition(TENANT, p, s.partitions, 1, f"g{p}")[0] for p in range(6)]
    await append(tenant_db, upserts(subjects, 1), s)
    worker = Worker(tenant_db, s, build_pipeline(s))
    seen: list[int] = []
    real = worker._process_group

    async def counted(partitions: list[int]) -> tuple[int, list[int]]:
        seen.append(len(partitions))
        return await real(partitions)

    worker._process_group = counted  # type: ignore[method-assign]
    assert await worker.drain_once() == 6
    assert seen == groups
    assert await backlog(tenant_db) == 0
