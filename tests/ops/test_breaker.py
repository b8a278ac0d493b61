"""The circuit breaker's judgement: what opens it, what does not."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

from lily.domain.errors import ServiceUnavailable
from lily.store.db import Database


async def test_a_busy_pool_answers_503_but_does_not_open_the_breaker(database_url: str) -> None:
    db = Database(database_url, min_size=1, max_size=1, timeout=0.3)
    await db.open()
    try:
        async with db.connection():  # the only connection, held
            began = time.monotonic()
            with pytest.raises(ServiceUnavailable):
                async with db.connection():
                    pass
            assert time.monotonic() - began < 1.0
        # The probe found the database fine: a full pool is not an outage.
        async with asyncio.timeout(5):
            while db.breaker.probing:
                await asyncio.sleep(0.01)
        assert not db.breaker.is_open and db.breaker.outages == 0
        await db.ping()
    finally:
        await db.close()


async def test_a_failing_statement_is_not_an_outage(database_url: str) -> None:
    db = Database(database_url, min_size=1, max_size=2)
    await db.open()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            async with db.connection() as conn:
                await conn.execute("SET statement_timeout = 1")
                await conn.execute("SELECT pg_sleep(1)")
        assert not db.breaker.is_open and db.breaker.last_error is None
        with pytest.raises(psycopg.errors.UndefinedTable):
            async with db.system() as conn:
                await conn.execute("SELECT * FROM no_such_table")
        assert not db.breaker.is_open
        await db.ping()
    finally:
        await db.close()


async def test_a_connection_cut_by_the_server_is_503_and_the_breaker_stays_closed(
    database_url: str, pg_admin_url: str
) -> None:
    db = Database(database_url, min_size=1, max_size=1)
    await db.open()
    try:
        with pytest.raises(ServiceUnavailable):
            async with db.connection() as conn:
                pid = conn.info.backend_pid
                with psycopg.connect(pg_admin_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [pid])
                await conn.execute("SELECT 1")
        # One lost connection: the probe reaches the server, so requests carry on.
        async with asyncio.timeout(5):
            while db.breaker.probing:
                await asyncio.sleep(0.01)
        assert not db.breaker.is_open
        await db.ping()
    finally:
        await db.close()
