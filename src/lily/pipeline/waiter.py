"""Read-your-writes: wait, bounded, until the worker has applied a given event.

One LISTEN connection per process hears every committed offset (``lily_applied``: "partition:seq")
and wakes the requests waiting on that partition. Works the same whether the worker runs in this
process (``lily serve``) or elsewhere (``lily worker``). An offset may pass an event without deciding
it (its subject is parked for a retry, or its tenant's lane holds it): the worker says so ("p:seq?")
before the offset moves, and says "p:seq!" when it decides it later; such an event is waited for until
then.
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
        self._held: dict[int, set[int]] = {}
        self._waiting: dict[int, list[tuple[int, asyncio.Future[None]]]] = {}
        self._task: asyncio.Task[None] | None = None
        # Which LISTEN session is up (a new number for each connection), None while there is none.
        self._listening: int | None = None
        self._sessions = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="lily-applied-listener")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def listening(self) -> int | None:
        """The LISTEN session up now, if any. Taken before an event is appended and handed back to
        :meth:`wait`: while the same session is still up, everything said of that event after its append
        reaches this process."""
        return self._listening

    async def wait(self, partition: int, seq: int, timeout: float, *, heard_since: int | None = None) -> bool:
        """True once ``seq`` of ``partition`` is applied (or failed), False after ``timeout`` seconds.
        ``heard_since``: the :meth:`listening` session taken before the event was appended."""
        if self._decided(partition, seq):
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(partition, []).append((seq, fut))
        try:
            if heard_since is None or heard_since != self._listening:
                # The event may have been applied (or held) before we listened: ask once. Not needed when
                # the listener was up before the append and still is (a round trip of every write saved):
                # PostgreSQL delivers every notification committed after LISTEN, so the worker's word on
                # this event comes, or has come, through it.
                async with self.db.connection() as conn:  # one round trip, outside any transaction
                    offset, held = await store_log.applied_state(conn, partition, seq)
                if held:
                    self._held.setdefault(partition, set()).add(seq)
                self._advance(partition, offset)
            await asyncio.wait_for(asyncio.shield(fut), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiting.get(partition, [])
            if (seq, fut) in waiting:
                waiting.remove((seq, fut))

    def _decided(self, partition: int, seq: int) -> bool:
        return self._offsets.get(partition, 0) >= seq and seq not in self._held.get(partition, ())

    def _note(self, partition: int, seq: int, mark: str) -> None:
        if mark == "?":
            self._held.setdefault(partition, set()).add(seq)
        elif mark == "!":
            held = self._held.get(partition)
            if held is not None:
                held.discard(seq)
            self._advance(partition, 0)
        else:
            self._advance(partition, seq)

    def _advance(self, partition: int, seq: int) -> None:
        if seq > self._offsets.get(partition, 0):
            self._offsets[partition] = seq
        keep = []
        for want, fut in self._waiting.get(partition, []):
            if self._decided(partition, want):
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
                    self._sessions += 1
                    self._listening = self._sessions
                    try:
                        async for note in conn.notifies():
                            for partition, seq, mark in store_log.parse_applied(note.payload):
                                self._note(partition, seq, mark)
                    finally:
                        self._listening = None
            except psycopg.OperationalError as exc:
                log.warning("applied-listener lost its connection, reconnecting: %s", exc)
                await asyncio.sleep(1)
