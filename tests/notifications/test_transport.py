"""The dispatcher's HTTP transport (lily.dispatch.transport) against real servers on loopback: kept-alive
connections, the address guard at connect time, a connection the receiver closed, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from lily.dispatch.transport import PooledTransport, delivery_client
from lily.netguard import BlockedAddress

from .receivers import Answer, closed_port, eventually, receiver


def client(transport: PooledTransport, timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=True)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def serving(handle: Handler) -> AsyncIterator[int]:
    """A loopback TCP server that runs ``handle`` for each connection; its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_connections_are_reused_across_requests_to_one_origin() -> None:
    transport = PooledTransport(allow_private=True)
    with receiver() as hook:
        async with client(transport) as http:
            for i in range(20):
                r = await http.post(f"{hook.url}/hook/{i % 3}", content=b'{"n": %d}' % i)
                assert r.status_code == 200
            # Concurrent requests open more connections, bounded by how many run at once.
            answers = await asyncio.gather(*(http.post(f"{hook.url}/c", content=b"{}") for _ in range(8)))
            assert {a.status_code for a in answers} == {200}
        assert len(hook.received()) == 28
        assert hook.connections == transport.connections_opened <= 8
        assert [r.json() for r in hook.received()[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_at_most_max_per_origin_connections_at_once() -> None:
    transport = PooledTransport(allow_private=True, max_per_origin=2)
    with receiver(lambda r: Answer(204, delay=0.05)) as hook:
        async with client(transport) as http:
            answers = await asyncio.gather(*(http.post(hook.url, content=b"{}") for _ in range(10)))
    assert {a.status_code for a in answers} == {204}
    assert hook.connections == 2


async def test_the_guard_refuses_at_connect_and_nothing_is_sent() -> None:
    transport = PooledTransport(allow_private=False)
    with receiver() as hook:
        async with client(transport) as http:
            with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1.*loopback"):
                await http.post(hook.url, content=b"{}")
            # A name is checked after resolution, on every address it resolves to.
            with pytest.raises(BlockedAddress, match=r"'localhost'.*loopback"):
                await http.post(f"http://localhost:{hook.port}/", content=b"{}")
    assert hook.connections == 0 and transport.connections_opened == 0


async def test_a_redirect_hop_opens_and_checks_a_connection_of_its_own() -> None:
    transport = PooledTransport(allow_private=True)
    with receiver() as target, receiver(lambda r: Answer(307, headers={"Location": target.url + "/moved"})) as hop:
        async with client(transport) as http:
            r = await http.post(hop.url + "/start", content=b'{"a": 1}')
    assert r.status_code == 200 and [q.path for q in target.received()] == ["/moved"]
    assert target.received()[0].body == b'{"a": 1}'  # 307 keeps the method and the body
    assert transport.connections_opened == 2
    # Two names for one address never share a connection (nor a TLS session): the pool is keyed by name.
    with receiver() as hook:
        async with client(transport) as http:
            await http.get(hook.url)
            await http.get(f"http://localhost:{hook.port}/")
        assert hook.connections == 2


@pytest.fixture
async def closes_on_second_request() -> AsyncIterator[tuple[int, list[int]]]:
    """A server that answers the first request of each connection, then closes the connection when the
    second arrives without answering it (what a receiver's idle timeout looks like to a client that sent
    just as it closed)."""
    served: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(0)
        for n in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
            length = int(lengths[0]) if lengths else 0
            await reader.readexactly(length)
            if n == 1:
                break
            served[-1] += 1
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        writer.close()

    async with serving(handle) as port:
        yield port, served


async def test_a_kept_alive_connection_closed_by_the_receiver_is_replaced(
    closes_on_second_request: tuple[int, list[int]],
) -> None:
    port, served = closes_on_second_request
    transport = PooledTransport(allow_private=True)
    async with client(transport) as http:
        first = await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
        second = await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
    assert first.status_code == second.status_code == 204
    assert served == [1, 1]  # the second request went again, on a new connection, and was answered once


async def test_no_answer_in_time_and_refused_connections_are_transport_errors() -> None:
    transport = PooledTransport(allow_private=True)
    with receiver(lambda r: Answer(200, delay=1.0)) as slow:
        async with client(transport, timeout=0.2) as http:
            with pytest.raises(httpx.ReadTimeout):
                await http.post(slow.url, content=b"{}")
            with pytest.raises(httpx.ConnectError):
                await http.post(f"http://127.0.0.1:{closed_port()}/", content=b"{}")
        async with client(transport, timeout=5) as http:
            r = await http.post(slow.url, content=b"{}")  # the timed-out connection was not reused
            assert r.status_code == 200
    assert transport.connections_opened == 2


async def test_the_delivery_client_keeps_no_cookies_between_receivers() -> None:
    # One client serves every tenant's channels: tenant A's receiver must not hand tenant B's requests a
    # cookie (nor learn one of B's) on the same host.
    with receiver(lambda r: Answer(200, headers={"Set-Cookie": "session=tenant-a; Path=/"})) as hook:
        async with delivery_client(allow_private=True, max_per_origin=4, timeout=5) as http:
            await http.post(hook.url + "/a", content=b"{}")
            await http.post(hook.url + "/b", content=b"{}")
    first, second = hook.received()
    assert "cookie" not in first.headers and "cookie" not in second.headers


@pytest.fixture
async def raw_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A loopback server that answers every request with the bytes the test puts in its list, then closes."""
    answers: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answers.pop(0))
        await writer.drain()
        writer.close()

    async with serving(handle) as port:
        yield port, answers


async def test_broken_answers_are_protocol_errors(raw_server: tuple[int, list[bytes]]) -> None:
    port, answers = raw_server
    answers.extend(
        [
            b"this is not HTTP\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part of the body",  # then closed
            b"",  # closed without a byte of answer, on a new connection
        ]
    )
    transport = PooledTransport(allow_private=True)
    async with client(transport) as http:
        for _ in range(3):
            with pytest.raises(httpx.RemoteProtocolError):
                await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
    assert transport.connections_opened == 3  # none of them was kept


async def test_waiting_longer_than_the_pool_timeout_for_a_connection_is_a_pool_timeout() -> None:
    transport = PooledTransport(allow_private=True, max_per_origin=1)
    with receiver(lambda r: Answer(204, delay=0.5)) as slow:
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5, pool=0.1)) as http:
            first = asyncio.create_task(http.post(slow.url, content=b"{}"))
            await eventually(slow.received, what="the first request holding the only connection")
            with pytest.raises(httpx.PoolTimeout):
                await http.post(slow.url, content=b"{}")
            assert (await first).status_code == 204


async def test_an_endless_answer_is_read_up_to_the_limit_and_its_connection_closed() -> None:
    # A receiver is a tenant's choice: one that streams forever must not fill the shared dispatcher's memory.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65_536, b"x" * 65_536)
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(chunk)
                await writer.drain()

    transport = PooledTransport(allow_private=True, max_body_bytes=200_000)
    async with serving(endless) as port, client(transport, timeout=10) as http:
        r = await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
        assert r.status_code == 200 and r.content == b"x" * 200_000
        r = await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
        assert len(r.content) == 200_000
    assert transport.connections_opened == 2  # the cut-off connection was not reused


async def test_a_compressed_answer_is_not_decoded_so_the_bound_holds() -> None:
    # A gzip bomb: 64 KB that a decoding client would expand to 64 MB in the shared dispatcher.
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(bomb), bomb))
        await writer.drain()

    transport = PooledTransport(allow_private=True, max_body_bytes=200_000)
    async with serving(answer) as port, client(transport, timeout=10) as http:
        r = await http.post(f"http://127.0.0.1:{port}/", content=b"{}")
    assert r.status_code == 200
    assert r.content == bomb[:200_000]  # the bytes that came, not 64 MB of zeros
    assert b"accept-encoding: identity" in seen[0].lower()
