"""An open-loop HTTP/1.1 load generator small enough to pace hundreds of requests a second beside the
server it measures (bench/api.py uses it for paced creates).

Open loop: request ``i`` is due at ``start + i / rate`` whatever happened to the ones before it, and its
latency counts from that moment, so a server that falls behind is charged for the queue it built
(no coordinated omission). wrk's ``delay()`` waits *after* each answer, so its connections offer less
the slower the server answers: at 60 ms answers, 100 connections pacing one create every 200 ms offer
385 a second, not 500. ``hey -q`` paces properly but sends one body, and creates need a name each.

Each request goes out on an idle keep-alive connection, or a new one when all are busy (never more
than ``max_connections``; beyond that a request waits for one, and its wait counts). Requests are
written by hand and answers read by ``Content-Length``: an ``httpx`` client spends about ten times the
CPU per request, which at 500 a second is a part of a core taken from the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import figures  # bench/figures.py, beside this script


@dataclass
class Paced:
    """What a paced run saw: every answer's latency (seconds, from its due time) and status."""

    due: int
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    failures: int = 0  # no answer: a refused or broken connection, or still unanswered at the end
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def errors(self, ok: int) -> int:
        return self.failures + sum(n for status, n in self.statuses.items() if status != ok)

    def percentile(self, p: float) -> float:
        return figures.percentile(self.latencies, p) * 1000


class _Connections:
    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(limit)

    async def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A connection and whether it was idle (the server may have closed it since: see :func:`pace`)."""
        await self.slots.acquire()
        if self.idle:
            return (*self.idle.pop(), True)
        return (*(await self.open()), False)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_connection(self.host, self.port)
        except BaseException:
            self.slots.release()
            raise

    def give_back(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        if conn is not None:
            self.idle.append(conn)
        self.slots.release()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def pace(
    url: str, rate: float, seconds: float, request: Callable[[int], bytes], *, max_connections: int = 1000,
    grace: float = 30.0,
) -> Paced:  # fmt: skip
    """Send ``request(i)`` (the whole HTTP/1.1 request, keep-alive) at ``rate`` per second for ``seconds``
    to ``url``'s host; wait up to ``grace`` seconds after the last due time for the answers."""
    parts = urlsplit(url)
    pool = _Connections(parts.hostname or "127.0.0.1", parts.port or 80, max_connections)
    result = Paced(due=int(rate * seconds))
    start = time.perf_counter() + 0.05

    async def one(i: int) -> None:
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        conn = None
        try:
            reader, writer, reused = await pool.take()
            conn = (reader, writer)
            try:
                status = await _exchange(reader, writer, request(i))
            except (OSError, asyncio.IncompleteReadError):
                if not reused:
                    raise
                # The server closed the idle connection (its keep-alive timeout): once more on a new one,
                # as any HTTP client does with a request that got no answer at all.
                writer.close()
                conn = await pool.open()
                status = await _exchange(*conn, request(i))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            if conn is not None:
                conn[1].close()
            pool.give_back(None)
            result.failures += 1
            result.failure_kinds[type(exc).__name__] = result.failure_kinds.get(type(exc).__name__, 0) + 1
            return
        pool.give_back(conn)
        result.latencies.append(time.perf_counter() - due)
        result.statuses[status] = result.statuses.get(status, 0) + 1

    tasks = [asyncio.ensure_future(one(i)) for i in range(result.due)]
    _, late = await asyncio.wait(tasks, timeout=seconds + grace)
    for task in late:
        task.cancel()
    result.failures += len(late)
    result.elapsed = time.perf_counter() - start
    for _, writer in pool.idle:
        writer.close()
    return result


def json_post(url: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP/1.1 POST of a JSON body, keep-alive."""
    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]  # fmt: skip
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
