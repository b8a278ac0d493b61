"""Helpers shared by the pipeline and dead-letter tests: bounded polling, holding a partition, plugins."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import psycopg
import pytest

from lily.domain.events import partition_of

T = TypeVar("T")

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
PARTITION_LOCK = 0x4C4F47  # lily.store.log._PARTITION_LOCK: the workers' advisory-lock namespace


async def until(
    check: Callable[[], Awaitable[T | None]], *, timeout: float = 15.0, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds.

    Polling observable state, bounded: never a fixed sleep standing in for synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {value!r})")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def hold_partition(database_url: str, partition: int) -> AsyncIterator[None]:
    """Keep workers off ``partition`` (as a busy worker would) until the block ends.

    A session-level advisory lock in the workers' namespace makes their ``pg_try_advisory_xact_lock``
    fail, so events accepted meanwhile queue up and are consumed together once it is released.
    """
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s, %s)", [PARTITION_LOCK, partition])
        try:
            yield
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", [PARTITION_LOCK, partition])


def subjects_in_partition(tenant_id: str, partition: int, partitions: int, count: int, prefix: str) -> list[str]:
    """``count`` qualified names that hash to ``partition`` for this tenant."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        name = f"{prefix}{i}"
        if partition_of(tenant_id, name, partitions) == partition:
            found.append(name)
        i += 1
    return found


async def event_state(client: Any, headers: dict[str, str], event_id: str) -> dict[str, Any]:
    r = await client.get(f"/events/{event_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def settled(client: Any, headers: dict[str, str], event_id: str, timeout: float = 15.0) -> dict[str, Any]:
    """The event's status once the pipeline has decided it (applied, failed or dead-lettered)."""

    async def check() -> dict[str, Any] | None:
        state = await event_state(client, headers, event_id)
        return state if state["state"] != "accepted" else None

    return await until(check, timeout=timeout, what=f"event {event_id} to be decided")


def install_test_hooks(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The body of a ``test_hooks`` fixture (``yield from`` it): installs the ``lily_test_hooks`` plugin
    for one test. Its ``.dist-info`` becomes visible to ``importlib.metadata``, so ``lily.plugins.load_plugins`` finds
    it through the ``lily.hooks`` entry-point group.

    Request it before ``app`` (the app loads hooks when it starts). Yields the plugin module, whose
    ``BROKEN_SUBJECTS`` a test fills to break subjects and empties to "fix" them.
    """
    monkeypatch.syspath_prepend(str(PLUGINS))
    import lily_test_hooks

    lily_test_hooks.BROKEN_SUBJECTS.clear()
    yield lily_test_hooks
    lily_test_hooks.BROKEN_SUBJECTS.clear()
