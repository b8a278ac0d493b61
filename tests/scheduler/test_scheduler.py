"""The scheduler against a real PostgreSQL, in-process: leadership, claims, outcomes, catch-up, run-now.

Rounds are driven with ``tick(now=...)`` where a test needs a due time to have come, so nothing waits
for the wall clock; leadership changes are made by really ending the leader's database session.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from lily import admin
from lily.config import Settings
from lily.scheduler.loop import Scheduler
from lily.scheduler.schedule import ScheduleError
from lily.store import jobs as store
from lily.store.db import PIPELINE_ROLE, Database, as_pipeline
from tests.pipeline.support import until

from .conftest import Recorder


async def all_runs(database_url: str, job: str | None = None) -> list[dict[str, Any]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True, row_factory=dict_row) as conn:
        await conn.execute(f"SET ROLE {PIPELINE_ROLE}")  # sees every run, whatever the login role
        cur = await conn.execute(
            "SELECT * FROM job_runs WHERE %s::text IS NULL OR job = %s ORDER BY scheduled_for, created_at", [job, job]
        )
        return await cur.fetchall()


async def settle(scheduler: Scheduler) -> None:
    """Wait for the runs this scheduler has in hand to finish and be recorded."""
    await asyncio.gather(*scheduler.in_hand.values())


async def lead(scheduler: Scheduler) -> datetime:
    """A first round: the scheduler leads and registers its jobs; the database's time then."""
    await scheduler.tick()
    assert scheduler.leadership.since is not None, "the scheduler must lead"
    return scheduler.leadership.since


async def end_session(database_url: str, scheduler: Scheduler) -> None:
    """End the scheduler's leader session from outside, as a dead process or a partition would."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"lily-scheduler {scheduler.node}"[:63]],
        )
        assert [row[0] for row in await cur.fetchall()] == [True]


async def test_a_due_run_is_recorded_with_its_outcome_and_result(make_scheduler: Any, database_url: str) -> None:
    job = Recorder("rec", "every 60s")
    scheduler = make_scheduler(job)
    since = await lead(scheduler)
    now = since + timedelta(seconds=60)
    await scheduler.tick(now=now)
    await settle(scheduler)
    [run] = await all_runs(database_url)
    due = scheduler.schedules["rec"].latest_due(now)
    assert run["job"] == "rec" and run["trigger"] == "schedule" and run["tenant_id"] is None
    assert run["scheduled_for"] == due
    assert run["state"] == "succeeded" and run["error"] is None and run["result"] == {"n": 1}
    assert run["runner"] == scheduler.node
    assert run["started_at"] <= run["finished_at"]
    [ctx] = job.calls
    assert ctx.scheduled_for == due and ctx.run_id == str(run["run_id"])


@pytest.mark.parametrize(
    ("fail", "returns", "error"),
    [("boom", None, "RuntimeError: boom"), (None, [1, 2], "TypeError: run() returned list, not a dict or None")],
)
async def test_a_failing_run_is_recorded_with_its_error(
    make_scheduler: Any, database_url: str, fail: str | None, returns: Any, error: str
) -> None:
    job = Recorder("rec", "every 60s")
    job.fail, job.returns = fail, returns
    scheduler = make_scheduler(job)
    since = await lead(scheduler)
    await scheduler.tick(now=since + timedelta(seconds=60))
    await settle(scheduler)
    [run] = await all_runs(database_url)
    assert run["state"] == "failed" and run["error"] == error and run["result"] is None
    assert run["finished_at"] is not None


async def test_missed_due_times_run_once_not_as_a_burst(make_scheduler: Any, database_url: str) -> None:
    job = Recorder("rec", "every 60s")
    scheduler = make_scheduler(job)
    since = await lead(scheduler)
    # Three due times have passed since the anchor (rounds land on a due time, so both are in one minute).
    later = scheduler.schedules["rec"].latest_due(since + timedelta(seconds=185))
    await scheduler.tick(now=later)
    await settle(scheduler)
    await scheduler.tick(now=later + timedelta(seconds=1))
    await settle(scheduler)
    runs = await all_runs(database_url)
    assert [r["scheduled_for"] for r in runs] == [scheduler.schedules["rec"].latest_due(later)]
    assert len(job.calls) == 1


async def test_a_due_time_before_the_job_was_first_seen_never_runs(make_scheduler: Any, database_url: str) -> None:
    job = Recorder("nightly", "0 3 * * *")
    scheduler = make_scheduler(job)
    since = await lead(scheduler)
    await scheduler.tick(now=since + timedelta(seconds=1))
    assert scheduler.in_hand == {} and await all_runs(database_url) == []
    # The first 03:00 after the job appeared does run.
    first = scheduler.schedules["nightly"].next_due(since)
    await scheduler.tick(now=first + timedelta(seconds=5))
    await settle(scheduler)
    assert [r["scheduled_for"] for r in await all_runs(database_url)] == [first]


async def test_one_leader_at_a_time_and_a_clean_resignation_hands_over(make_scheduler: Any, db: Database) -> None:
    first, second = make_scheduler(Recorder()), make_scheduler(Recorder())
    await lead(first)
    await second.tick()
    assert not second.leadership.leading
    async with db.connection() as conn:
        status = await store.leader_status(conn)
    assert status["active"] and status["node"] == first.node
    await first.leadership.resign()
    await lead(second)
    async with db.connection() as conn:
        assert (await store.leader_status(conn))["node"] == second.node


async def test_a_leader_whose_session_dies_is_replaced_and_steps_down(make_scheduler: Any, database_url: str) -> None:
    first, second = make_scheduler(Recorder()), make_scheduler(Recorder())
    await lead(first)
    await end_session(database_url, first)
    await lead(second)
    await first.tick()
    assert not first.leadership.leading, "a leader that lost its session must stop leading"


async def test_a_deposed_leader_still_running_cannot_make_its_due_time_run_twice(
    make_scheduler: Any, database_url: str
) -> None:
    """Two processes that both believe they lead: the unique due-time key lets only one run it."""
    old_job, new_job = Recorder("rec"), Recorder("rec")
    old_job.gate = asyncio.Event()
    old, new = make_scheduler(old_job), make_scheduler(new_job)
    since = await lead(old)
    now = since + timedelta(seconds=60)
    await old.tick(now=now)
    assert "rec" in old.in_hand  # running, and stuck
    await end_session(database_url, old)
    await lead(new)  # takes over; the old run is closed as abandoned
    [run] = await all_runs(database_url)
    assert run["state"] == "failed" and run["error"].startswith("abandoned")
    await new.tick(now=now)  # the same due time: already claimed
    assert new.in_hand == {} and new_job.calls == []
    old_job.gate.set()  # the deposed leader's run ends after all, and its outcome is the truth
    await settle(old)
    [run] = await all_runs(database_url)
    assert run["state"] == "succeeded" and run["runner"] == old.node and run["error"] is None
    assert len(old_job.calls) == 1


async def test_concurrent_claims_of_one_due_time_yield_one_run(database_url: str) -> None:
    db = Database(database_url, min_size=8, max_size=8)
    await db.open()
    try:
        due = datetime.fromisoformat("2026-03-01T12:00:00+00:00")

        async def claim(i: int) -> dict[str, Any] | None:
            async with db.system() as conn:
                await as_pipeline(conn)
                return await store.claim_due(conn, "rec", due, f"node-{i}")

        claimed = [r for r in await asyncio.gather(*(claim(i) for i in range(8))) if r is not None]
    finally:
        await db.close()
    assert len(claimed) == 1
    assert [r["run_id"] for r in await all_runs(database_url)] == [claimed[0]["run_id"]]


async def test_a_run_now_request_is_run_by_the_leader_and_a_second_ask_joins_it(
    make_scheduler: Any, db: Database, database_url: str
) -> None:
    job = Recorder("rec", "0 3 1 1 *")  # not due during the test
    scheduler = make_scheduler(job)
    async with db.system() as conn:
        await as_pipeline(conn)
        first, created = await store.request_run(conn, "rec", "operator", None)
        again, created_again = await store.request_run(conn, "rec", "operator", None)
    assert created and not created_again and again["run_id"] == first["run_id"]
    assert first["state"] == "queued" and first["started_at"] is None
    await lead(scheduler)
    await settle(scheduler)
    [run] = await all_runs(database_url)
    assert run["run_id"] == first["run_id"] and run["trigger"] == "manual"
    assert run["state"] == "succeeded" and run["requested_by"] == "operator" and run["runner"] == scheduler.node
    assert len(job.calls) == 1 and job.calls[0].run_id == str(first["run_id"])


async def test_run_now_waits_while_the_job_runs_then_runs_once(make_scheduler: Any, db: Database) -> None:
    job = Recorder("rec", "every 60s")
    job.gate = asyncio.Event()
    scheduler = make_scheduler(job)
    since = await lead(scheduler)
    due = scheduler.schedules["rec"].latest_due(since + timedelta(seconds=60))  # rounds within one minute
    await scheduler.tick(now=due)
    async with db.system() as conn:
        await as_pipeline(conn)
        request, _ = await store.request_run(conn, "rec", "operator", None)
    await scheduler.tick(now=due + timedelta(seconds=1))
    assert len(job.calls) == 1, "one run of a job at a time in a process"
    job.gate.set()
    await settle(scheduler)
    await scheduler.tick(now=due + timedelta(seconds=2))
    await settle(scheduler)
    assert len(job.calls) == 2 and job.calls[1].run_id == str(request["run_id"])


async def test_stopping_cancels_a_run_that_outlasts_the_grace_and_records_it(
    make_scheduler: Any, db: Database, database_url: str
) -> None:
    job = Recorder("rec", "every 1s")
    job.gate = asyncio.Event()  # never set: the run hangs
    scheduler = make_scheduler(job)
    scheduler.shutdown_grace_seconds = 0.1
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))

    async def started() -> bool:
        return bool(job.calls)

    await until(started, timeout=10, what="the job to start")
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    [run] = await all_runs(database_url)
    assert run["state"] == "failed" and run["error"].startswith("cancelled")
    async with db.connection() as conn:
        assert (await store.leader_status(conn))["active"] is False


async def test_the_loop_runs_an_interval_job_every_time_it_falls_due(make_scheduler: Any, database_url: str) -> None:
    job = Recorder("rec", "every 1s")
    scheduler = make_scheduler(job)
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))

    async def three_runs() -> bool:
        return len([r for r in await all_runs(database_url) if r["state"] == "succeeded"]) >= 3

    try:
        await until(three_runs, timeout=15, what="three runs")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    due_times = [r["scheduled_for"] for r in await all_runs(database_url)]
    assert len(due_times) == len(set(due_times))
    assert all((b - a).total_seconds() >= 1 and b.microsecond == 0 for a, b in itertools.pairwise(due_times))


def test_a_job_with_a_bad_schedule_is_refused_naming_it(db: Database, settings: Settings) -> None:
    with pytest.raises(ScheduleError, match="job plugin 'odd' has an unusable schedule"):
        Scheduler(db, settings, {"odd": Recorder("odd", "every now and then")})


async def test_a_new_leader_closes_a_run_it_could_not_record_itself(make_scheduler: Any, database_url: str) -> None:
    """A run left 'running' by this very process (its outcome was lost while the database was away) is
    closed when it leads again, unless it is still running it."""
    scheduler = make_scheduler(Recorder())
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"SET ROLE {PIPELINE_ROLE}")
        await conn.execute(
            "INSERT INTO job_runs (run_id, job, trigger, scheduled_for, state, runner, started_at)"
            " VALUES (gen_random_uuid(), 'rec', 'schedule', now() - interval '1 hour', 'running', %s, now())",
            [scheduler.node],
        )
    await lead(scheduler)
    [run] = await all_runs(database_url)
    assert run["state"] == "failed" and run["error"].startswith("abandoned")


async def test_an_unreachable_database_means_following_not_failing(make_scheduler: Any) -> None:
    scheduler = make_scheduler(Recorder())
    url = scheduler.leadership.database_url
    scheduler.leadership.database_url = "postgresql://lily@127.0.0.1:1/nowhere?connect_timeout=1"
    assert await scheduler.tick() == scheduler.poll_seconds
    assert not scheduler.leadership.leading
    scheduler.leadership.database_url = url  # the database is back
    await lead(scheduler)


async def test_failing_rounds_do_not_end_the_scheduler(database_url: str, settings: Settings) -> None:
    """Rounds fail while the pool cannot give connections; the loop keeps going and runs jobs once it can."""
    db = Database(database_url, min_size=1, max_size=2)  # not opened yet: every round fails
    job = Recorder("rec", "every 1s")
    scheduler = Scheduler(db, settings, {"rec": job})
    stop = asyncio.Event()
    task = asyncio.create_task(scheduler.run(stop))
    try:

        async def leading() -> bool:
            return scheduler.leadership.leading

        await until(leading, timeout=10, what="the scheduler to lead")
        assert not task.done() and job.calls == []
        await db.open()

        async def ran() -> bool:
            return any(r["state"] == "succeeded" for r in await all_runs(database_url))

        await until(ran, timeout=10, what="a run once the pool works")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await db.close()


async def test_the_leader_session_carries_its_guards(database_url: str) -> None:
    conn = await store.leader_connection(database_url, idle_timeout_seconds=12, application_name="guards")
    try:
        shown = {}
        for name in ("role", "idle_session_timeout", "tcp_keepalives_idle", "tcp_user_timeout"):
            row = await (await conn.execute(f"SHOW {name}")).fetchone()
            assert row is not None
            shown[name] = row[name]
    finally:
        await conn.close()
    assert shown["role"] == PIPELINE_ROLE and shown["idle_session_timeout"] == "12s"
    # Over a Unix socket the TCP settings read as 0 (they do not apply); over TCP as set.
    assert shown["tcp_keepalives_idle"] in ("0", "5") and shown["tcp_user_timeout"] in ("0", "10s")


async def test_a_frozen_leader_loses_the_lock_to_the_idle_session_timeout(database_url: str) -> None:
    """A leader process that is alive but stuck stops heartbeating; the server ends its session."""
    frozen = await store.leader_connection(database_url, idle_timeout_seconds=1, application_name="frozen")
    other = await store.leader_connection(database_url, idle_timeout_seconds=30, application_name="other")
    try:
        assert await store.try_lead(frozen, "frozen") is not None
        assert await store.try_lead(other, "other") is None

        async def free() -> bool:
            return await store.try_lead(other, "other") is not None

        await until(free, timeout=15, interval=0.1, what="the frozen leader's session to be ended")
        assert frozen.closed or frozen.broken or (await _fails(frozen))
    finally:
        await frozen.close()
        await other.close()


async def _fails(conn: Any) -> bool:
    try:
        await conn.execute("SELECT 1")
    except psycopg.Error:
        return True
    return False


async def test_requests_for_several_tenants_run_one_at_a_time(
    make_scheduler: Any, db: Database, database_url: str
) -> None:
    """Tenant-scoped requests of one job may wait side by side; the leader starts the oldest, then the next."""
    job = Recorder("rec", "0 3 1 1 *")
    scheduler = make_scheduler(job)
    ids = []
    for tenant in ("acme", "globex"):
        await admin.create_tenant(db, tenant)
        async with db.system() as conn:
            await as_pipeline(conn)
            row, _ = await store.request_run(conn, "rec", f"key:{tenant}", tenant)
            ids.append(row["run_id"])
    await lead(scheduler)
    await settle(scheduler)
    await scheduler.tick()
    await settle(scheduler)
    assert [ctx.run_id for ctx in job.calls] == [str(i) for i in ids]
    assert {r["state"] for r in await all_runs(database_url)} == {"succeeded"}
