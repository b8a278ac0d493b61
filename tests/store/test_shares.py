"""One tenant cannot take every pooled connection of a process: its own requests wait, then 429."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from lily.domain.errors import TooManyRequests
from lily.store.db import Database


async def test_a_tenant_holding_its_share_waits_while_another_tenant_gets_a_connection(database_url: str) -> None:
    db = Database(database_url, min_size=1, max_size=4, timeout=0.5, tenant_share=0.5)
    await db.open()
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(2):  # tenant a takes its whole share: half of the pool's four connections
                await held.enter_async_context(db.tenant("a"))
            assert db.shares.in_use("a") == 2

            started = time.monotonic()
            async with db.tenant("b") as conn:  # another tenant is not held up by a's load
                cur = await conn.execute("SELECT current_setting('lily.tenant_id') AS t")
                assert (await cur.fetchone()) == {"t": "b"}
            assert time.monotonic() - started < 0.4

            with pytest.raises(TooManyRequests) as refused:
                async with db.tenant("a"):
                    pass
            assert refused.value.extra["retry_after_seconds"] == 1
        assert db.shares.in_use("a") == 0  # released as the transactions ended; nothing is left behind
        async with db.tenant("a"):
            pass
    finally:
        await db.close()


async def test_a_waiting_request_gets_the_first_connection_its_tenant_frees(database_url: str) -> None:
    db = Database(database_url, min_size=1, max_size=2, timeout=5, tenant_share=0.5)
    await db.open()
    try:
        release = asyncio.Event()

        async def hold() -> None:
            async with db.tenant("a"):
                await release.wait()

        holder = asyncio.create_task(hold())
        while db.shares.in_use("a") < 1:
            await asyncio.sleep(0.01)

        async def second() -> str:
            async with db.tenant("a") as conn:
                cur = await conn.execute("SELECT 'second' AS s")
                row = await cur.fetchone()
                assert row is not None
                return str(row["s"])

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0)  # let it queue on a's share
        assert not waiting.done()
        release.set()
        assert await asyncio.wait_for(waiting, 5) == "second"
        await holder
    finally:
        await db.close()


async def test_a_request_after_the_pool_closed_is_told_to_retry(database_url: str) -> None:
    """Shutting down, a request still in flight gets 503 with Retry-After, never a 500."""
    from lily.domain.errors import ServiceUnavailable

    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    await db.close()
    with pytest.raises(ServiceUnavailable) as refused:
        async with db.tenant("a"):
            pass
    assert refused.value.extra["retry_after_seconds"] == 1
