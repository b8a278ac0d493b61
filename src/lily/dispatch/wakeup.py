"""What wakes an idle dispatcher: PostgreSQL notifications, with a poll behind them.

One LISTEN connection per dispatcher (outside the pool) hears ``lily_changes`` (migration 0009's trigger:
change events committed, so fan-out has work) and ``lily_deliveries`` (sent by the statements that make
deliveries due now: fan-out, a notification, a retry; so sending has work), and sets the matching event.
Notifications are hints only: the dispatcher also looks every ``LILY_DELIVERY_POLL_SECONDS`` (retries
coming due, leases of a dead dispatcher ending), so a lost one costs latency, never a delivery. Losing
the connection wakes every loop once; they poll until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from lily.store.changes import NOTIFY_CHANNEL as CHANGES
from lily.store.notifications import NOTIFY_CHANNEL as DELIVERIES

log = logging.getLogger(__name__)


class Wakeups:
    def __init__(self, url: str, *, changes: asyncio.Event, deliveries: asyncio.Event) -> None:
        self.url = url
        self.changes = changes
        self.deliveries = deliveries
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after a lost connection."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANGES}; LISTEN {DELIVERIES}")
                    self.listening.set()
                    # Whatever committed before LISTEN took effect is found by looking once now.
                    self.changes.set()
                    self.deliveries.set()
                    async for note in conn.notifies():
                        (self.changes if note.channel == CHANGES else self.deliveries).set()
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("dispatcher listener lost its connection, reconnecting: %s", exc)
            self.listening.clear()
            self.changes.set()
            self.deliveries.set()
            await asyncio.sleep(1)  # before reconnecting; the loops poll meanwhile


async def wait(event: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set, ``stop`` is set or ``timeout`` passes; clears ``event``."""
    if not event.is_set() and not stop.is_set():
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*waiters, return_exceptions=True)
    event.clear()
