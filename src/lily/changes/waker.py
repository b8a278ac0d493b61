"""Wakes long-polling feed readers when a tenant's change events commit.

One LISTEN connection per process (outside the pool, opened on the first wait) hears the
``lily_changes`` notifications migration 0009's trigger sends at commit, one per tenant per statement,
and bumps that tenant's generation. A reader notes the generation before it reads and, finding
nothing, waits for it to move: a notification that lands between its read and its wait is not lost.
Notifications are a hint only — readers also poll (:mod:`lily.changes.feed`) — so a dropped listener
connection costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from lily.store.changes import NOTIFY_CHANNEL

log = logging.getLogger(__name__)


class ChangeWaker:
    def __init__(self, url: str) -> None:
        self.url = url
        self._generations: dict[str, int] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    def generation(self, tenant_id: str) -> int:
        return self._generations.get(tenant_id, 0)

    async def wait(self, tenant_id: str, seen: int, timeout: float) -> bool:
        """Wait up to ``timeout`` s for ``tenant_id``'s generation to pass ``seen``; whether it did."""
        self._ensure_listening()
        if self.generation(tenant_id) != seen:
            return True
        event = self._events.get(tenant_id)
        if event is None:
            event = self._events[tenant_id] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return self.generation(tenant_id) != seen
        return True

    async def ready(self, timeout: float = 5.0) -> bool:
        """Whether the listener is up (tests wait for it so a first notification is not left to polling)."""
        self._ensure_listening()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._listening.wait(), timeout)
        return self._listening.is_set()

    def _wake(self, tenant_id: str) -> None:
        self._generations[tenant_id] = self._generations.get(tenant_id, 0) + 1
        event = self._events.pop(tenant_id, None)
        if event is not None:
            event.set()

    def _ensure_listening(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="lily-change-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    self._listening.set()
                    async for note in conn.notifies():
                        self._wake(note.payload)
            except psycopg.OperationalError as exc:
                log.warning("change listener lost its connection, reconnecting: %s", exc)
            self._listening.clear()
            # Whoever waits re-reads: what was notified while the connection was down is found by reading.
            for tenant_id in list(self._events):
                self._wake(tenant_id)
            await asyncio.sleep(1)
