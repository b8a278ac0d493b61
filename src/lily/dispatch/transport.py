"""The dispatcher's HTTP/1.1 transport: keep-alive connections per origin, the address guard at connect.

Why not httpx's own transport: measured on the 2-core machine, httpx over httpcore (anyio streams, one
pool scanned in full on every request) reached 400-800 requests/s to a loopback receiver that a plain
asyncio client drives at over 10,000/s; the dispatcher's goal is 1,000 deliveries/s with CPU to spare
for its database work. This transport keeps httpx's client (redirects, timeouts, the ``httpx.Response``
every channel reads) and replaces only the connection layer: asyncio streams, h11 for the framing
(the parser httpcore uses), one small pool per origin.

- **The guard at connect time.** A new connection resolves the host, checks every address
  (:func:`lily.netguard.check_target`: refused unless public, or private targets are allowed) and
  connects to a checked address; TLS verifies the certificate and sends SNI for the name. A kept-alive
  connection already passed the check, so reusing it needs none (no DNS per request), and a redirect to
  another host opens (and checks) a connection of its own.
- **Pools per origin** (scheme, host, port): at most ``max_per_origin`` connections at once, idle ones
  reused newest first and closed after ``keepalive_seconds``. The pool is keyed by the name, never the
  address, so two names on one address never share a connection (nor its TLS session).
- A request on a reused connection that the receiver closed meanwhile (the keep-alive race: nothing of
  the answer arrived) is sent once more on a new connection.
- **Answers are read up to ``max_body_bytes``** (1 MiB): what a receiver sends beyond is not read, and its
  connection is closed. A receiver is a tenant's choice; an endless body within the attempt's timeout must
  not fill the dispatcher's memory, which every tenant's deliveries share (a delivery keeps 1,000 characters
  of the answer anyway). Requests ask for ``identity`` and answers are never decoded, so the bound holds for
  a compressed answer too (a decompression bomb stays the bytes that came).
- No proxies, no HTTP/2: the dispatcher connects to receivers directly (a proxy would connect to
  addresses the guard never saw).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import h11
import httpx

from lily.netguard import check_target

__all__ = ["PooledTransport", "delivery_client"]

READ_CHUNK = 65_536
MAX_BODY_BYTES = 1 << 20


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()

    def usable(self, now: float, keepalive: float) -> bool:
        """Idle, not expired, and not closed by the other side (asyncio has read its EOF by now)."""
        return (
            now - self.idle_since < keepalive
            and not self.reader.at_eof()
            and not self.writer.is_closing()
            and self.h11.our_state is h11.IDLE
        )

    def close(self) -> None:
        self.writer.close()


class _Pool:
    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.busy = 0  # slots taken: requests sent or waiting for a connection, bodies not yet read
        self.idle: list[_Connection] = []


class _Body(httpx.AsyncByteStream):
    """A response body read as the caller iterates; the connection goes back to its pool at the end."""

    def __init__(
        self,
        transport: PooledTransport,
        pool: _Pool,
        conn: _Connection,
        request: httpx.Request,
        read_timeout: float | None,
        max_bytes: int,
    ) -> None:
        self._transport = transport
        self._left = max_bytes
        self._request = request
        self._pool = pool
        self._conn: _Connection | None = conn
        self._timeout = read_timeout
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                try:
                    event = await _next_event(conn, self._timeout)
                except TimeoutError:
                    raise httpx.ReadTimeout("the answer's body did not arrive in time", request=self._request) from None
                except (OSError, _Closed, h11.RemoteProtocolError) as exc:
                    raise _read_error(exc, self._request) from None
                if isinstance(event, h11.Data):
                    data = bytes(event.data)
                    if len(data) > self._left:
                        # The rest is never read: the connection closes (not complete, so not reused).
                        yield data[: self._left]
                        await self.aclose()
                        return
                    self._left -= len(data)
                    yield data
                elif isinstance(event, h11.EndOfMessage):
                    self._complete = True
                    return
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport._release(self._pool, conn, reusable=self._complete)


class PooledTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport that connects only to addresses :mod:`lily.netguard` allows (see module)."""

    def __init__(
        self,
        *,
        allow_private: bool,
        max_per_origin: int = 32,
        keepalive_seconds: float = 30.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.max_per_origin = max_per_origin
        self.keepalive = keepalive_seconds
        self.max_body_bytes = max_body_bytes
        self._ssl = ssl_context
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._swept = time.monotonic()
        self.connections_opened = 0  # for tests and figures: how often the guard ran and a socket opened

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"the dispatcher sends only http and https, not {url.scheme!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        origin = (url.scheme, url.host, port)
        self._sweep()
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self.max_per_origin)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = b"".join([part async for part in request.stream])  # type: ignore[union-attr]
        # Answers uncompressed (see _respond): ask for nothing else.
        request.headers["accept-encoding"] = "identity"
        pool.busy += 1
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await pool.slots.acquire()
        except BaseException as exc:
            pool.busy -= 1
            if isinstance(exc, TimeoutError):
                raise httpx.PoolTimeout("no connection to the receiver came free in time", request=request) from None
            raise
        try:
            conn = self._idle(pool)
            while conn is not None:
                response = await self._exchange(request, conn, body, timeouts, reused=True)
                if response is not None:
                    return self._respond(pool, conn, request, response, timeouts)
                conn = self._idle(pool)  # closed by the receiver while idle: the next, or a new one
            conn = await self._connect(request, origin, timeouts.get("connect"))
            response = await self._exchange(request, conn, body, timeouts, reused=False)
            assert response is not None
            return self._respond(pool, conn, request, response, timeouts)
        except BaseException:
            pool.busy -= 1
            pool.slots.release()
            raise

    def _respond(
        self,
        pool: _Pool,
        conn: _Connection,
        request: httpx.Request,
        response: h11.Response,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        return httpx.Response(
            status_code=response.status_code,
            # Without its Content-Encoding, an answer reaches the caller as the bytes that came (at most
            # max_body_bytes): httpx would otherwise decode it, and a megabyte of gzip or brotli a
            # receiver chose to send regardless can expand a thousandfold in the shared dispatcher.
            headers=[(bytes(k), bytes(v)) for k, v in response.headers.raw_items() if k.lower() != b"content-encoding"],
            stream=_Body(self, pool, conn, request, timeouts.get("read"), self.max_body_bytes),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": bytes(response.reason)},
        )

    def _idle(self, pool: _Pool) -> _Connection | None:
        now = time.monotonic()
        while pool.idle:
            conn = pool.idle.pop()
            if conn.usable(now, self.keepalive):
                return conn
            conn.close()
        return None

    def _release(self, pool: _Pool, conn: _Connection, *, reusable: bool) -> None:
        pool.busy -= 1
        pool.slots.release()
        if reusable and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)
        else:
            conn.close()

    def _sweep(self) -> None:
        """Close connections idle past the keep-alive and forget pools with nothing in them (an origin
        written to once must not keep a socket, nor an entry, forever)."""
        now = time.monotonic()
        if now - self._swept < self.keepalive:
            return
        self._swept = now
        for origin, pool in list(self._pools.items()):
            kept = []
            for conn in pool.idle:
                if conn.usable(now, self.keepalive):
                    kept.append(conn)
                else:
                    conn.close()
            pool.idle = kept
            if not kept and pool.busy == 0:
                del self._pools[origin]

    async def _connect(
        self, request: httpx.Request, origin: tuple[str, str, int], timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        # The guard: every address the name resolves to must be allowed; BlockedAddress otherwise.
        addresses = await check_target(host, port, allow_private=self.allow_private)
        tls = self._ssl_context() if scheme == "https" else None
        error: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                for address in addresses:  # all checked; the first that answers
                    try:
                        reader, writer = await asyncio.open_connection(
                            address, port, ssl=tls, server_hostname=host if tls else None, limit=READ_CHUNK
                        )
                    except (OSError, ssl.SSLError) as exc:
                        error = exc
                        continue
                    self.connections_opened += 1
                    return _Connection(reader, writer)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {host} within {timeout:g} s", request=request) from None
        raise httpx.ConnectError(f"cannot connect to {host}:{port}: {error}", request=request)

    async def _exchange(
        self,
        request: httpx.Request,
        conn: _Connection,
        body: bytes,
        timeouts: dict[str, float | None],
        *,
        reused: bool,
    ) -> h11.Response | None:
        """Send the request and read the answer's head. None: a reused connection turned out closed
        before any of the answer arrived (the caller tries another)."""
        try:
            return await self._send_and_read_head(request, conn, body, timeouts)
        except _Closed:
            conn.close()
            if reused:
                return None
            raise httpx.RemoteProtocolError(
                "the receiver closed the connection without answering", request=request
            ) from None
        except TimeoutError as exc:
            conn.close()
            phase = "take the request" if isinstance(exc, _WriteTimeout) else "answer"
            error = httpx.WriteTimeout if isinstance(exc, _WriteTimeout) else httpx.ReadTimeout
            raise error(f"the receiver did not {phase} in time", request=request) from None
        except OSError as exc:
            conn.close()
            if reused and isinstance(exc, (ConnectionResetError, BrokenPipeError)):
                return None  # the keep-alive race: closed as we sent; nothing of the answer came
            raise _read_error(exc, request) from None
        except h11.RemoteProtocolError as exc:
            conn.close()
            raise _read_error(exc, request) from None
        except BaseException:
            conn.close()  # cancelled mid-exchange: the connection is in an unknown state
            raise

    async def _send_and_read_head(
        self, request: httpx.Request, conn: _Connection, body: bytes, timeouts: dict[str, float | None]
    ) -> h11.Response:
        head = h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw)
        parts = [conn.h11.send(head), conn.h11.send(h11.Data(data=body)) if body else None]
        parts.append(conn.h11.send(h11.EndOfMessage()))
        conn.writer.write(b"".join(p for p in parts if p))  # one write: one segment for a small request
        try:
            async with asyncio.timeout(timeouts.get("write")):
                await conn.writer.drain()
        except TimeoutError:
            raise _WriteTimeout() from None
        while True:
            event = await _next_event(conn, timeouts.get("read"))
            if isinstance(event, h11.Response):
                return event
            # an InformationalResponse (1xx): the real answer follows

    async def aclose(self) -> None:
        for pool in self._pools.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
        self._pools.clear()


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass

    def set_cookie_header(self, request: httpx.Request) -> None:
        pass


class _DeliveryClient(httpx.AsyncClient):
    """A client that keeps no cookies. It serves every tenant's channels: a cookie one receiver sets must
    never ride along on another tenant's request to the same host. (Not keeping them also saves the
    cookie jar's work on every answer: a standard-library request object built per response.)"""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NoCookies()

    @cookies.setter
    def cookies(self, value: Any) -> None:
        pass


def delivery_client(*, allow_private: bool, max_per_origin: int, timeout: float) -> httpx.AsyncClient:
    """The client the dispatcher hands to channels: :class:`PooledTransport`, no cookies."""
    transport = PooledTransport(allow_private=allow_private, max_per_origin=max_per_origin)
    return _DeliveryClient(transport=transport, timeout=timeout)


class _Closed(Exception):
    """The other side closed the connection before the message ended."""


class _WriteTimeout(TimeoutError):
    pass


def _read_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    if isinstance(exc, _Closed):
        return httpx.RemoteProtocolError("the receiver closed the connection mid-answer", request=request)
    if isinstance(exc, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(f"the receiver's answer is not valid HTTP/1.1: {exc}", request=request)
    return httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request)


async def _next_event(conn: _Connection, timeout: float | None) -> Any:
    while True:
        event = conn.h11.next_event()
        if event is h11.NEED_DATA:
            async with asyncio.timeout(timeout):
                data = await conn.reader.read(READ_CHUNK)
            if not data and conn.h11.their_state is h11.SEND_RESPONSE:
                raise _Closed()
            conn.h11.receive_data(data)  # b"" is the end of the stream (a close-delimited body ends)
            continue
        if event is h11.PAUSED:
            raise h11.RemoteProtocolError("the receiver sent more than one answer")
        return event
