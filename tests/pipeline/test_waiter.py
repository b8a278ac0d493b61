"""Read-your-writes waiting: when the listener needs no question to the database, and when it must ask."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lily.domain.events import ASSET_UPSERT, NewEvent
from lily.pipeline.waiter import AppliedWaiter
from lily.store import log as store_log

from .support import hold_partition, subjects_in_partition, until


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every (partition, seq) a waiter asks the database about (the real query still runs)."""
    calls: list[tuple[int, int]] = []
    real = store_log.applied_state

    async def counting(conn: Any, partition: int, seq: int) -> Any:
        calls.append((partition, seq))
        return await real(conn, partition, seq)

    monkeypatch.setattr(store_log, "applied_state", counting)
    return calls


def upsert(tenant_id: str, name: str) -> NewEvent:
    payload = {"qualified_name": f"pg://w/s.{name}", "type": "table"}
    return NewEvent(tenant_id, payload["qualified_name"], ASSET_UPSERT, payload, "key:test")


async def test_a_write_appended_while_the_listener_is_up_is_awaited_without_a_question(
    app: Any, client: Any, tenant: Any, asked: list[tuple[int, int]]
) -> None:
    waiter = app.state.runtime.writer.waiter

    async def listening() -> int | None:
        return waiter.listening()

    await until(listening, what="the applied-listener's LISTEN")
    r = await client.post("/metadata", json={"qualified_name": "pg://w/s.t", "type": "table"}, headers=tenant.headers())
    assert r.status_code == 201, r.text
    writer = app.state.runtime.writer
    submitted = await writer.submit(upsert(tenant.tenant_id, "u"))
    assert submitted.heard_since == waiter.listening()
    assert await writer.wait(submitted, 15)
    assert asked == []


async def test_without_the_listener_the_waiter_asks_and_finds_the_event_applied(
    app: Any, tenant: Any, asked: list[tuple[int, int]]
) -> None:
    runtime = app.state.runtime
    submitted = await runtime.writer.submit(upsert(tenant.tenant_id, "v"))
    assert await runtime.writer.wait(submitted, 15)
    # A waiter whose listener is not up (or is another session than the one before the append: it may
    # have missed the news) cannot count on hearing it: it asks, and the answer ends the wait at once.
    fresh = AppliedWaiter(runtime.db)
    for session in (None, submitted.heard_since, 12345):
        asked.clear()
        assert await fresh.wait(submitted.partition, submitted.seq, 15, heard_since=session)
        assert asked == [(submitted.partition, submitted.seq)]
        fresh = AppliedWaiter(runtime.db)


async def test_a_waiter_without_a_listener_asks_again_until_the_event_is_applied(
    app: Any, database_url: str, tenant: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first writes after startup, or during a reconnect, are appended while no LISTEN of this process is
    up: an event applied after the waiter's question must still end the wait, not run it out (a CI run
    answered a first create 202 after 10 s)."""
    runtime = app.state.runtime
    settings = runtime.settings
    name = subjects_in_partition(tenant.tenant_id, 0, settings.partitions, 1, "pg://w/s.late")[0]
    answers: list[tuple[int, bool]] = []
    first_answer = asyncio.Event()
    real = store_log.applied_state

    async def answering(conn: Any, partition: int, seq: int) -> Any:
        answer = await real(conn, partition, seq)
        answers.append(answer)
        first_answer.set()
        return answer

    monkeypatch.setattr(store_log, "applied_state", answering)
    fresh = AppliedWaiter(runtime.db)  # never started: no listener, as before the first LISTEN
    async with hold_partition(database_url, 0):
        submitted = await runtime.writer.submit(upsert(tenant.tenant_id, name.removeprefix("pg://w/s.")))
        assert submitted.partition == 0
        waiting = asyncio.create_task(fresh.wait(submitted.partition, submitted.seq, 20, heard_since=None))
        await asyncio.wait_for(first_answer.wait(), 15)
        assert answers[0][0] < submitted.seq  # asked while the event was still waiting for its partition
    # Released: the workers apply it, and only a question can tell this waiter so.
    assert await asyncio.wait_for(waiting, 25)
    assert answers[-1][0] >= submitted.seq and len(answers) >= 2
