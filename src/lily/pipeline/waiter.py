"""Read-your-writes: wait, bounded, until the worker has applied a given event.

One LISTEN connection per process hears every committed offset (``lily_applied``: "partition:seq")
and wakes the requests waiting on that partition. Works the same whether the worker runs in this
process (``lily serve``) or elsewhere (``lily worker``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from lily.store import log as store_log
from lily.store.db import Database

log = logging.getLogger(__name__)


class AppliedWaiter:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._offsets: dict[int, int] = {}
        self._waiting: dict[int, list[tuple[int, asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="lily-applied-listener")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait(self, partition: int, seq: int, timeout: float) -> bool:
        """True once ``seq`` of ``partition`` is applied (or failed), False after ``timeout`` seconds."""
        if self._offsets.get(partition, 0) >= seq:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(partition, []).append((seq, fut))
        try:
            # The event may have been applied before we registered: ask once.
            async with self.db.connection() as conn:  # one autocommit read: no transaction needed
                offsets = await store_log.applied_offsets(conn, [partition])
            self._advance(partition, offsets.get(partition, 0))
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(partition, [])
            if (seq, fut) in waiting:
                waiting.remove((seq, fut))

    def _advance(self, partition: int, seq: int) -> None:
        if seq > self._offsets.get(partition, 0):
            self._offsets[partition] = seq
        keep = []
        for want, fut in self._waiting.get(partition, []):
            if want <= seq:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((want, fut))
        self._waiting[partition] = keep

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.db.url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {store_log.APPLIED_CHANNEL}")
                    async for note in conn.notifies():
                        for partition, seq in store_log.parse_applied(note.payload):
                            self._advance(partition, seq)
            except psycopg.OperationalError as exc:
                log.warning("applied-listener lost its connection, reconnecting: %s", exc)
                await asyncio.sleep(1)
