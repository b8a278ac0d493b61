"""Waking the workers after single appends (lily.pipeline.wake): not in the append's transaction, after
its commit, many appends to one notification."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.pipeline.wake import LogWaker
from lily.store import log as store_log
from lily.store.db import Database

MARKER = "marker"


def upsert(tenant_id: str, name: str) -> NewEvent:
    payload = {"qualified_name": f"pg://wake/s.{name}", "type": "table"}
    return NewEvent(tenant_id, payload["qualified_name"], ASSET_UPSERT, payload, "key:test")


@pytest.fixture
async def listener(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(f"LISTEN {store_log.LOG_CHANNEL}")
        yield conn


async def heard_until_marker(listener: psycopg.AsyncConnection[Any], database_url: str) -> list[str]:
    """The ``lily_log`` payloads committed before a marker notification sent now, in commit order
    (PostgreSQL delivers notifications in the order their transactions committed)."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", [store_log.LOG_CHANNEL, MARKER])
    heard = []
    async for note in listener.notifies(timeout=15):
        if note.payload == MARKER:
            return heard
        heard.append(note.payload)
    raise AssertionError(f"the marker never came (heard {heard})")


async def test_a_single_append_does_not_notify_in_its_transaction(
    app: Any, tenant: Any, listener: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    runtime = app.state.runtime
    db: Database = runtime.db
    async with db.alone(tenant.tenant_id) as conn:
        accepted = await store_log.append_alone(conn, upsert(tenant.tenant_id, "a"), runtime.settings.partitions)
    assert await heard_until_marker(listener, database_url) == []
    async with db.connection() as conn:
        await store_log.wake_workers(conn, [accepted.partition])
    assert await heard_until_marker(listener, database_url) == [str(accepted.partition)]


async def test_the_writer_wakes_the_workers_for_the_partition_it_appended_to(
    app: Any, tenant: Any, listener: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    writer = app.state.runtime.writer
    submitted = await writer.submit(upsert(tenant.tenant_id, "b"))
    await writer.waker.flush()  # the wake-up sent
    assert await heard_until_marker(listener, database_url) == [str(submitted.partition)]
    assert await writer.wait(submitted, 15)  # and the worker it woke applied the event


async def test_wakes_noted_while_none_is_on_its_way_go_in_one_notification(
    db: Database, listener: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    waker = LogWaker(db)
    for partition in (7, 3, 7, 12):
        waker.wake(partition)
    await waker.flush()
    assert await heard_until_marker(listener, database_url) == ["3,7,12"]


async def test_a_wake_that_cannot_reach_the_database_is_logged_not_raised(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = Database(database_url)  # never opened: every checkout fails
    waker = LogWaker(closed)
    with caplog.at_level(logging.WARNING, logger="lily.pipeline.wake"):
        waker.wake(1)
        await waker.flush()
    assert "could not wake the workers" in caplog.text
