"""A circuit breaker that knows when the database is down, so requests fail at once.

Without it every request queues on the pool until its checkout times out, and a load balancer sees a
server that hangs rather than one that says "not now". Any sign of trouble (a connection that broke
mid-query, a checkout that timed out) starts a probe: a fresh connection attempt, outside the pool.
A probe that fails opens the breaker: from then on requests answer 503 without touching the pool,
while the probe keeps trying every ``probe_interval`` seconds. The first probe that succeeds runs the
recovery callbacks (the pool drops the dead connections it still holds) and closes the breaker.
A timed-out checkout alone never opens it: a busy pool is not a dead database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg

from lily.domain.errors import ServiceUnavailable

log = logging.getLogger(__name__)

# SQLSTATEs that mean "this server is going away or not accepting connections", as opposed to errors
# of one statement (a deadlock, a cancelled query) that a healthy server also raises.
_UNAVAILABLE_STATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def means_unavailable(exc: BaseException, conn: psycopg.AsyncConnection[object] | None = None) -> bool:
    """Whether ``exc`` says the database (not the statement) failed."""
    if conn is not None and isinstance(exc, psycopg.InterfaceError) and (conn.broken or conn.closed):
        return True  # a connection that died earlier in this request, used again
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if conn is not None and conn.broken:
        return True
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _UNAVAILABLE_STATES


class Breaker:
    def __init__(
        self,
        url: str,
        *,
        probe_interval: float = 0.5,
        probe_timeout: float = 1.0,
        retry_after_seconds: int = 1,
    ) -> None:
        self.url = url
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.retry_after_seconds = retry_after_seconds
        self.down_since: float | None = None  # time.monotonic() when the breaker opened
        self.last_error: str | None = None
        self.outages = 0
        self.last_outage_seconds: float | None = None
        self._on_recover: list[Callable[[], Awaitable[None]]] = []
        self._probe: asyncio.Task[None] | None = None
        self._verdict = asyncio.Event()  # set once the running probe's first attempt has answered

    @property
    def is_open(self) -> bool:
        return self.down_since is not None

    @property
    def probing(self) -> bool:
        """Whether a probe is out (after a sign of trouble, until the database answers again)."""
        return self._probe is not None and not self._probe.done()

    def on_recover(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_recover.append(callback)

    def check(self) -> None:
        """Raise :class:`ServiceUnavailable` at once while the database is known to be down."""
        if self.down_since is not None:
            raise self.unavailable()

    async def settle(self) -> None:
        """While a probe's first attempt is out, wait for it (milliseconds), then :meth:`check`.

        Without this, requests that arrive between the first sign of trouble and the probe's answer
        would each wait out a full pool checkout timeout.
        """
        if self._probe is not None and not self._probe.done() and not self._verdict.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_timeout):
                    await self._verdict.wait()
        self.check()

    def unavailable(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            "the database is unavailable; retry shortly", retry_after_seconds=self.retry_after_seconds
        )

    def suspect(self, exc: BaseException) -> ServiceUnavailable:
        """Something failed in a way that may mean the database is down: probe it. Returns the 503 to raise."""
        self.last_error = _describe(exc)
        if self._probe is None or self._probe.done():
            self._verdict.clear()
            self._probe = asyncio.get_running_loop().create_task(self._watch(), name="lily-db-probe")
        return self.unavailable()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe
            self._probe = None

    async def probe(self) -> bool:
        """One attempt to reach the database on a fresh connection, bounded by ``probe_timeout``."""
        try:
            async with asyncio.timeout(self.probe_timeout):
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                async with conn:
                    await conn.execute("SELECT 1")
        except (OSError, TimeoutError, psycopg.Error) as exc:
            self.last_error = _describe(exc)
            return False
        return True

    async def _watch(self) -> None:
        while not await self.probe():
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.outages += 1
                log.error("database unreachable, answering 503 until it returns: %s", self.last_error)
            self._verdict.set()
            await asyncio.sleep(self.probe_interval)
        self._verdict.set()
        if self.down_since is None:
            return  # a false alarm: one broken connection, the server itself is fine
        for callback in self._on_recover:
            try:
                await callback()
            except Exception as exc:  # the breaker must close even if a recovery step fails
                log.warning("database recovery step failed: %s", _describe(exc))
        self.last_outage_seconds = time.monotonic() - self.down_since
        self.down_since = None
        log.warning("database reachable again after %.1fs", self.last_outage_seconds)


def _describe(exc: BaseException) -> str:
    # The class and SQLSTATE only: a driver's message can carry host names and socket paths.
    state = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" ({state})" if state else "")
