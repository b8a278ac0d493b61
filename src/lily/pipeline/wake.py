"""Wakes the workers after single appends commit, many appends to one notification.

A single write's append (``lily_append_event``) does not NOTIFY in its own transaction: a transaction
that has notified holds a lock for the whole cluster from its commit until its WAL flush is done, so
appends that notified committed one at a time (migration 0024 says what that cost). The process that
appended wakes the workers instead, after the commit: :meth:`LogWaker.wake` notes the partition, and
one task sends ``lily_log`` for every partition noted since the last notification, with
``synchronous_commit`` off (a wake-up is a hint: nothing needs it on disk). While a notification is on
its way, the appends that commit meanwhile wait for the next one, so at 500 creates a second the
workers get a few dozen notifications a second, not 500.

A lost notification (a broken connection, a database restart) costs latency, never an event: the
workers also look at the log every quarter second.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from lily.domain.errors import ServiceUnavailable
from lily.store import log as store_log
from lily.store.db import Database

log = logging.getLogger(__name__)


class LogWaker:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: set[int] = set()
        self._sending: asyncio.Task[None] | None = None

    def wake(self, partition: int) -> None:
        """Have the workers look at ``partition`` soon: in the notification being sent unless one is on
        its way already, then in the next."""
        self._pending.add(partition)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.create_task(self._send(), name="lily-log-wake")

    async def _send(self) -> None:
        while self._pending:
            partitions, self._pending = sorted(self._pending), set()
            try:
                async with self.db.connection() as conn:
                    await store_log.wake_workers(conn, partitions)
            except (ServiceUnavailable, psycopg.Error) as exc:
                log.warning("could not wake the workers (they find the events within a poll): %s", exc)
                return

    async def flush(self) -> None:
        """Until what was noted is sent (at shutdown: the last appends are not left to the workers' poll)."""
        if self._sending is not None:
            await asyncio.gather(self._sending, return_exceptions=True)
