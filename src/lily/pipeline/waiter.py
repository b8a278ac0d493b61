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

# How often a write waiting while no listener is up asks the database again (a worker's poll is 0.25 s).
_ASK_AGAIN_SECONDS = 0.25
# How often a write waiting on a listener checks that the listener is still the session it counted on.
_RECHECK_SESSION_SECONDS = 1.0
# How long startup waits for the first LISTEN, so the first writes need no questions (then it goes on).
_FIRST_LISTEN_SECONDS = 10.0


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
        self._up = asyncio.Event()

    async def start(self) -> None:
        """Start listening, and return once the first LISTEN is up (or after a bounded wait: a write that
        comes before it asks the database instead)."""
        self._task = asyncio.create_task(self._listen(), name="lily-applied-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._up.wait(), _FIRST_LISTEN_SECONDS)

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        fut: asyncio.Future[None] = loop.create_future()
        self._waiting.setdefault(partition, []).append((seq, fut))
        asked = False
        try:
            while True:
                if asked or heard_since is None or heard_since != self._listening:
                    # The event may have been decided while no session of ours listened (before the first
                    # LISTEN, or while the listener reconnected): ask. Not needed when the listener was up
                    # before the append and still is (a round trip of every write saved): PostgreSQL
                    # delivers every notification committed after LISTEN, so the worker's word on this
                    # event comes, or has come, through it. The session is taken before the question, so
                    # the answer and what that session hears afterwards leave nothing out. Once asked,
                    # each look asks again: an answer that crossed the worker's word on the way ("held",
                    # just as it was decided) must not hold the wait until its end.
                    heard_since = self._listening
                    async with self.db.connection() as conn:  # one round trip, outside any transaction
                        offset, held = await store_log.applied_state(conn, partition, seq)
                    asked = True
                    if held:
                        self._held.setdefault(partition, set()).add(seq)
                    elif offset >= seq:  # decided for good (a decided event is never held again)
                        self._held.get(partition, set()).discard(seq)
                    self._advance(partition, offset)
                remaining = deadline - loop.time()
                if fut.done() or remaining <= 0:
                    return fut.done()
                # With no listener up, the worker's word may never reach us: look again soon. With one up,
                # look now and then, in case it was replaced meanwhile (a reconnect misses what was said
                # in between).
                pause = _ASK_AGAIN_SECONDS if heard_since is None else _RECHECK_SESSION_SECONDS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), min(remaining, pause))
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
                    self._up.set()
                    try:
                        async for note in conn.notifies():
                            for partition, seq, mark in store_log.parse_applied(note.payload):
                                self._note(partition, seq, mark)
                    finally:
                        self._listening = None
            except psycopg.OperationalError as exc:
                log.warning("applied-listener lost its connection, reconnecting: %s", exc)
                await asyncio.sleep(1)
