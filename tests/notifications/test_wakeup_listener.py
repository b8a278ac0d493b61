"""The dispatcher's LISTEN connection (lily.dispatch.wakeup): notifications set its events, and a lost
connection wakes the loops and is replaced; its one-round-trip transactions roll back on failure."""

from __future__ import annotations

import asyncio
import contextlib

import psycopg
import pytest

from lily.config import Settings
from lily.crypto import Keyring
from lily.dispatch.dispatcher import Dispatcher
from lily.dispatch.wakeup import Wakeups
from lily.store.changes import NOTIFY_CHANNEL as CHANGES
from lily.store.db import Database
from lily.store.notifications import NOTIFY_CHANNEL as DELIVERIES

from .receivers import eventually


async def test_notifications_wake_and_a_lost_connection_is_replaced(database_url: str) -> None:
    changes, deliveries = asyncio.Event(), asyncio.Event()
    wakeups = Wakeups(database_url, changes=changes, deliveries=deliveries)
    task = asyncio.create_task(wakeups.run())
    try:
        await asyncio.wait_for(wakeups.listening.wait(), 15)
        changes.clear()
        deliveries.clear()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f"NOTIFY {DELIVERIES}")
            await asyncio.wait_for(deliveries.wait(), 15)
            assert not changes.is_set()
            await conn.execute(f"NOTIFY {CHANGES}, 'acme'")
            await asyncio.wait_for(changes.wait(), 15)
            changes.clear()
            deliveries.clear()
            # The server drops the listener: both loops are woken (they look for work themselves), and
            # the listener comes back.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%' AND pid <> pg_backend_pid()"
            )
            await asyncio.wait_for(changes.wait(), 15)
            await asyncio.wait_for(deliveries.wait(), 15)
            await eventually(lambda: not wakeups.listening.is_set() or None, timeout=15, what="the drop noticed")
            await asyncio.wait_for(wakeups.listening.wait(), 15)
            deliveries.clear()
            await conn.execute(f"NOTIFY {DELIVERIES}")
            await asyncio.wait_for(deliveries.wait(), 15)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_failed_dispatcher_transaction_is_rolled_back(database_url: str, settings: Settings) -> None:
    db = Database(database_url, min_size=1, max_size=1)  # one connection: the next transaction gets it back
    await db.open()
    try:
        dispatcher = Dispatcher(db, settings, {}, Keyring.from_settings(settings))
        with pytest.raises(psycopg.errors.UndefinedTable):
            async with dispatcher._transaction() as conn:
                await conn.execute("SELECT set_config('lily.probe', 'left over', true)")
                await (await conn.execute("SELECT * FROM no_such_table")).fetchall()
        async with dispatcher._transaction() as conn:
            cur = await conn.execute("SELECT current_user AS who, current_setting('lily.probe', true) AS probe")
            row = await cur.fetchone()
        assert row is not None and row["who"] == "lily_pipeline" and not row["probe"]
    finally:
        await db.close()
