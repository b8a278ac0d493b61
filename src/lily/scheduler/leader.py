"""Leadership: one scheduler process at a time runs jobs, whichever process it is.

The leader holds a session-level advisory lock on a dedicated connection (see
:func:`lily.store.jobs.leader_connection` for what ends that session when its process dies or hangs).
Followers try to take the lock every poll interval, so a leader killed with ``kill -9`` is replaced
within about one interval: its socket closes, PostgreSQL ends the session and frees the lock.

The leader confirms it still holds the lock before every round of claims (a heartbeat through the
same connection, bounded by a timeout). If that fails it steps down at once and closes the connection,
which releases the lock if its session still exists. A leader cut off by a network partition stops
claiming within one heartbeat timeout, long before the server's keepalives free the lock for another;
and even if two processes ever both believed they led, the unique ``(job, scheduled_for)`` key on
runs lets only one of them run each due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import datetime

import psycopg

from lily.scheduler import metrics
from lily.store import jobs as store
from lily.store.db import Conn

log = logging.getLogger(__name__)


def node_name() -> str:
    """This process, as recorded on the runs it starts: ``host:pid:random`` (short enough to be whole in
    the leader session's ``application_name``, which PostgreSQL cuts at 63 bytes)."""
    host = socket.gethostname().encode("ascii", "replace").decode()[:32]
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Leadership:
    def __init__(self, database_url: str, node: str, *, poll_seconds: float) -> None:
        self.database_url = database_url
        self.node = node
        self.poll_seconds = poll_seconds
        # A heartbeat slower than this means the database or the path to it is in trouble: stop leading.
        self.timeout = max(2.0, 2 * poll_seconds)
        self.since: datetime | None = None
        self._conn: Conn | None = None

    @property
    def leading(self) -> bool:
        return self.since is not None

    async def check(self) -> datetime | None:
        """Lead if possible and confirm it; the database's clock while leading, else None."""
        try:
            return await asyncio.wait_for(self._check(), timeout=self.timeout)
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if self.leading:
                log.warning("scheduler %s stops leading: %s: %s", self.node, type(exc).__name__, exc)
            else:
                log.debug("scheduler %s could not try to lead: %s", self.node, exc)
            await self._drop()
            return None

    async def _check(self) -> datetime | None:
        if self._conn is None or self._conn.closed:
            self._conn = await store.leader_connection(
                self.database_url,
                # Several missed heartbeats in a row, and the server ends the session (and the lock).
                idle_timeout_seconds=max(10, int(10 * self.poll_seconds)),
                application_name=f"lily-scheduler {self.node}"[:63],
            )
        if self.since is not None:
            now = await store.heartbeat(self._conn, self.node)
            if now is None:
                log.warning("scheduler %s stops leading: the leader record names another process", self.node)
                await self._drop()
            return now
        since = await store.try_lead(self._conn, self.node)
        if since is not None:
            self.since = since
            metrics.LEADER.set(1)
            metrics.LEADERSHIPS.inc()
            log.info("scheduler %s leads", self.node)
        return since

    async def resign(self) -> None:
        """Give the lock up on a clean shutdown, so a follower takes over without waiting for anything."""
        if self._conn is not None and not self._conn.closed and self.leading:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                await asyncio.wait_for(store.resign(self._conn, self.node), timeout=self.timeout)
        await self._drop()

    async def _drop(self) -> None:
        self.since = None
        metrics.LEADER.set(0)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
