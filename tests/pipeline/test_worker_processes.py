"""The acceptance test of the log: ``lily worker`` processes, one killed with ``kill -9`` mid-run.

Events are appended through the real log path (``store.log.append``, as the API's writer does) while
two worker processes consume them. When the victim holds a partition mid-transaction and some but not
all events are applied, it is SIGKILLed. The survivor must take its partitions over and finish, and
then: every event applied exactly once, each subject's versions in the order the log accepted its
events, nothing unapplied, nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from lily import admin
from lily.api.app import create_app
from lily.config import Settings
from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.store import log as store_log
from lily.store.db import Database
from lily.store.migrate import migrate

from .support import PARTITION_LOCK, until

TENANT = "acme"


def spawn_worker(database_url: str, partitions: int, home: Path, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LILY_DATABASE_URL": database_url,
        "LILY_PARTITIONS": str(partitions),
        "LILY_HOME": str(home),
        "LILY_HOOKS": "source_stamp",
        # Smaller batches mean more transactions, so the kill is likelier to land inside one.
        "LILY_WORKER_BATCH_SIZE": "200",
        "LILY_LOG_LEVEL": "WARNING",
        "PGAPPNAME": name,  # lets the test see which backend (and which partition locks) is whose
    }
    with open(home / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-c", "from lily.cli import main; main()", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def plan(total: int, subjects: int, seed: int) -> list[tuple[str, int]]:
    """``total`` (subject, n) pairs, subjects interleaved at random; n counts 1, 2, … per subject."""
    rng = random.Random(seed)
    counts: dict[str, int] = defaultdict(int)
    out = []
    for _ in range(total):
        subject = f"pg://warehouse/s.t{rng.randrange(subjects):04d}"
        counts[subject] += 1
        out.append((subject, counts[subject]))
    return out


async def scalar(conn: psycopg.AsyncConnection[Any], sql: str, params: list[Any] | None = None) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    return row[0] if row else None


async def run_with_kill(database_url: str, partitions: int, home: Path, total: int, subjects: int) -> dict[str, Any]:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    await admin.create_tenant(db, TENANT)
    work = plan(total, subjects, seed=total)
    victim, survivor = (spawn_worker(database_url, partitions, home, f"lily-accept-{i}") for i in range(2))
    procs = [victim, survivor]
    watch = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        started = time.monotonic()

        async def append_all() -> None:
            for i in range(0, total, 250):
                events = [
                    NewEvent(
                        TENANT,
                        s,
                        ASSET_UPSERT,
                        {"qualified_name": s, "type": "table", "attributes": {"n": n}},
                        "test:loader",
                    )
                    for s, n in work[i : i + 250]
                ]
                async with db.tenant(TENANT) as conn:
                    await store_log.append(conn, events, partitions)

        appender = asyncio.create_task(append_all())

        async def applied() -> int:
            return int(await scalar(watch, "SELECT coalesce(sum(applied_seq), 0) FROM log_offsets"))

        held: list[int] = []

        async def victim_mid_batch() -> bool:
            # Some events applied, and the victim holds a partition lock right now: it is inside a
            # batch transaction, the worst moment to die.
            if await applied() < total // 10:
                return False
            cur = await watch.execute(
                "SELECT l.objid::int FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
                " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.granted AND a.application_name = %s",
                [PARTITION_LOCK, "lily-accept-0"],
            )
            held[:] = [row[0] for row in await cur.fetchall()]
            return bool(held)

        async def consuming() -> bool:
            return await applied() > 0

        await until(consuming, timeout=60, interval=0.005, what="the workers to start consuming")
        first_applied = time.monotonic()
        await until(victim_mid_batch, timeout=60, interval=0.005, what="the victim to be inside a batch")
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
        killed = time.monotonic()
        at_kill = await applied()

        async def offsets() -> dict[int, int]:
            cur = await watch.execute(
                "SELECT partition, applied_seq FROM log_offsets WHERE partition = ANY(%s)", [held]
            )
            return {int(p): int(seq) for p, seq in await cur.fetchall()}

        before = await offsets()

        async def taken_over() -> bool:
            # The victim's batches rolled back when its connection died, freeing its partition locks;
            # every partition it held must move on again, under the survivor.
            now = await offsets()
            return all(now[p] > before[p] for p in held)

        await until(taken_over, timeout=10, interval=0.01, what="the survivor to take the victim's partitions")
        takeover = time.monotonic() - killed
        await appender

        assert 0 < at_kill < total, "the kill must land mid-run"

        async def drained() -> bool:
            backlog = await scalar(
                watch,
                "SELECT coalesce(sum(h.next_seq - 1 - o.applied_seq), 0)"
                " FROM log_heads h JOIN log_offsets o USING (partition)",
            )
            return int(backlog) == 0

        await until(drained, timeout=90, interval=0.05, what="the backlog to drain")
        done = time.monotonic()
        elapsed, consuming_for = done - started, done - first_applied
        assert survivor.poll() is None, "the surviving worker must still be running"
        # A clean shutdown: SIGTERM finishes the batch in hand and exits 0.
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(timeout=20) == 0
        await verify(watch, work)
        return {
            "seconds_from_spawn": round(elapsed, 2),
            "applied_at_kill": at_kill,
            "takeover_seconds": round(takeover, 2),
            "seconds_consuming": round(consuming_for, 2),
            "events_per_second_consuming": round(total / consuming_for),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        await watch.close()
        await db.close()


async def verify(conn: psycopg.AsyncConnection[Any], work: list[tuple[str, int]]) -> None:
    total = len(work)
    cur = await conn.execute("SELECT status, count(*) FROM events GROUP BY status")
    assert dict(await cur.fetchall()) == {"applied": total}, "every event applied, none failed or pending"
    assert await scalar(conn, "SELECT count(*) FROM dead_letters") == 0
    assert await scalar(conn, "SELECT count(*) FROM log_offsets WHERE retry_at IS NOT NULL") == 0

    # The log's order per subject: events by seq (one subject lives in one partition).
    cur = await conn.execute(
        "SELECT subject, event_id, (payload->'attributes'->>'n')::int FROM events ORDER BY subject, seq"
    )
    accepted: dict[str, list[tuple[Any, int]]] = defaultdict(list)
    for subject, event_id, n in await cur.fetchall():
        accepted[subject].append((event_id, n))
    # What was applied: every version of every asset.
    cur = await conn.execute(
        "SELECT a.qualified_name, v.version, v.event_id, (v.snapshot->'attributes'->>'n')::int, a.version"
        " FROM asset_versions v JOIN assets a USING (tenant_id, asset_id) ORDER BY a.qualified_name, v.version"
    )
    versions: dict[str, list[tuple[int, Any, int]]] = defaultdict(list)
    current: dict[str, int] = {}
    for name, version, event_id, n, latest in await cur.fetchall():
        versions[name].append((version, event_id, n))
        current[name] = latest
    expected_counts: dict[str, int] = defaultdict(int)
    for subject, _ in work:
        expected_counts[subject] += 1
    assert set(versions) == set(accepted) == set(expected_counts)
    for subject, events in accepted.items():
        k = expected_counts[subject]
        # Accepted in the order they were sent…
        assert [n for _, n in events] == list(range(1, k + 1)), subject
        # …applied exactly once each (one version per event: every event changes n), in that order.
        assert versions[subject] == [(i + 1, events[i][0], i + 1) for i in range(k)], subject
        assert current[subject] == k


async def test_ten_thousand_events_two_worker_processes_one_killed(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """The issue's acceptance test: 10,000 events over 300 subjects (about 20 s on two cores)."""
    figures = await run_with_kill(database_url, settings.partitions, tmp_path, total=10_000, subjects=300)
    print(f"\n10,000 events, 8 partitions, 2 worker processes, one killed: {figures}")


@pytest.fixture
def database_url_32(pg_admin_url: str) -> Iterator[str]:
    """A database with the default 32 partitions (the shared template has 8)."""
    name = f"lily_p32_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(pg_admin_url, dbname=name)
    migrate(url, partitions=32)
    yield url
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
async def test_default_32_partitions_two_worker_processes_one_killed(database_url_32: str, tmp_path: Path) -> None:
    """The same with the default partition count (more partitions per worker to take over)."""
    figures = await run_with_kill(database_url_32, 32, tmp_path, total=3_000, subjects=300)
    print(f"\n3,000 events, 32 partitions, 2 worker processes, one killed: {figures}")


async def test_an_api_without_workers_reads_its_writes_through_a_worker_process(
    database_url: str, settings: Settings, tmp_path: Path
) -> None:
    """``lily api`` + ``lily worker``: the API's waiter hears the other process's commits (LISTEN)."""
    app = create_app(settings, database_url, run_workers=False)
    worker = spawn_worker(database_url, settings.partitions, tmp_path, "lily-ryw")
    try:
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await admin.create_tenant(runtime.db, TENANT)
            key = await admin.create_api_key(runtime.db, TENANT, "editor-key", "editor")
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://lily.test/lily/v1") as client:
                r = await client.post(
                    "/metadata",
                    json={"qualified_name": "pg://db/s.ryw", "type": "table"},
                    headers={"Authorization": f"Bearer {key}"},
                )
                assert r.status_code == 201, r.text  # applied by the worker process, within the wait
                assert r.json()["version"] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
