"""The HTTP protocol `lily serve` runs (httptools with a bounded head), over a real loopback socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lily.api.http import MAX_HEAD_BYTES, BoundedHttpToolsProtocol
from lily.cli import _uvicorn_config


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the number of headers and of body bytes it was given."""
    assert scope["type"] == "http"
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = f"{len(scope['headers'])} {size}".encode()
    length = str(len(body)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", length)]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    import uvicorn

    config = _uvicorn_config(echo, "127.0.0.1", 0, "warning")
    config.lifespan = "off"
    assert config.http is BoundedHttpToolsProtocol
    # Bound before the server starts: a connection made before it accepts waits in the backlog.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield sock.getsockname()[1]
    server.should_exit = True
    await task


async def exchange(port: int, *chunks: bytes) -> bytes:
    """Sends ``chunks``, then reads until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def request(headers: int = 1, header_size: int = 10, body: bytes = b"", close: bool = True) -> bytes:
    head = [b"POST /x HTTP/1.1", b"Host: lily"]
    head += [b"X-H%d: %s" % (i, b"v" * header_size) for i in range(headers)]
    head += [b"Content-Length: %d" % len(body)] + ([b"Connection: close"] if close else [])
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def over_the_bound(head: bytes) -> list[bytes]:
    """The first MAX_HEAD_BYTES + 100 bytes of ``head`` (which must not end by then), in two writes: the
    bound is crossed only by the second, so the server has read every byte it was sent when it closes (a
    close with bytes unread would reset the connection, and the answer could be lost)."""
    assert len(head) > MAX_HEAD_BYTES + 100 and b"\r\n\r\n" not in head[: MAX_HEAD_BYTES + 100]
    return [head[:MAX_HEAD_BYTES], head[MAX_HEAD_BYTES : MAX_HEAD_BYTES + 100]]


async def test_a_head_under_the_bound_and_a_large_body_are_served(port: int) -> None:
    big_body = b"b" * (MAX_HEAD_BYTES * 20)  # the body is not the head: arriving with it in one read is fine
    answer = await exchange(port, request(headers=100, header_size=100, body=big_body))
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert answer.endswith(b"103 %d" % len(big_body))


async def test_keep_alive_requests_each_get_the_whole_bound(port: int) -> None:
    # Three heads of ~10 KiB on one connection, pipelined in one write: the count starts again for each.
    one = request(headers=100, header_size=100, close=False)
    assert len(one) < MAX_HEAD_BYTES < 2 * len(one)
    answer = await exchange(port, one * 2 + request(headers=100, header_size=100))
    assert answer.count(b"HTTP/1.1 200") == 3, answer


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET /x HTTP/1.1\r\nHost: lily\r\nX-Big: " + b"v" * (1 << 20), id="one endless header value"),
        pytest.param(request(headers=20_000, header_size=10), id="many headers"),
        pytest.param(b"GET /" + b"u" * (1 << 20) + b" HTTP/1.1\r\n", id="a long URL"),
    ],
)
async def test_a_head_over_the_bound_is_refused_and_the_connection_closed(port: int, head: bytes) -> None:
    # Without the bound the server would wait for the rest of the head, and this read would time out.
    answer = await exchange(port, *over_the_bound(head))
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"Request head too large" in answer
    assert b"connection: close" in answer.lower()
