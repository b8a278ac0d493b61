"""The address guard: private targets refused after resolution, on every redirect hop, and Lily's own
database refused always."""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from lily.netguard import (
    BlockedAddress,
    GuardedTransport,
    check_target,
    check_target_sync,
    guarded_client,
    refusal,
    refuse_own_database,
)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("192.0.2.1", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


async def test_a_name_is_checked_after_resolution() -> None:
    with pytest.raises(BlockedAddress, match=r"'localhost': it resolves to .*loopback"):
        await check_target("localhost", 80, allow_private=False)
    assert "127.0.0.1" in await check_target("localhost", 80, allow_private=True)
    with pytest.raises(BlockedAddress, match="loopback"):
        check_target_sync("localhost", 80, allow_private=False)
    with pytest.raises(BlockedAddress, match="does not resolve"):
        await check_target("no-such-host.invalid", 80, allow_private=True)


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://localhost:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


async def test_the_client_refuses_loopback_unless_allowed(loopback_server: str) -> None:
    async with guarded_client(allow_private=False, timeout=5) as http:
        with pytest.raises(BlockedAddress, match="loopback"):
            await http.get(loopback_server)
        with pytest.raises(BlockedAddress, match="loopback"):
            await http.get(loopback_server.replace("localhost", "127.0.0.1"))
    async with guarded_client(allow_private=True, timeout=5) as http:
        r = await http.get(loopback_server)
        assert r.status_code == 200 and r.text == "ok"


async def test_every_redirect_hop_is_checked() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        if request.url.host == "93.184.216.34":
            return httpx.Response(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
        return httpx.Response(200, text="metadata")

    transport = GuardedTransport(allow_private=False, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as http:
        with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254.*link-local"):
            await http.get("http://93.184.216.34/hook")
    assert seen == ["http://93.184.216.34/hook"]  # the metadata address was never contacted


async def test_a_name_is_pinned_to_the_address_it_was_checked_at() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    transport = GuardedTransport(allow_private=True, inner=httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport) as http:
        await http.get("https://localhost:8443/hook")
    request = seen[0]
    assert ipaddress.ip_address(request.url.host).is_loopback  # connected to the checked address
    assert request.url.port == 8443
    assert request.headers["host"] == "localhost:8443"
    assert request.extensions["sni_hostname"] == "localhost"


def test_lily_own_database_is_refused_always() -> None:
    own = "postgresql://postgres@127.0.0.1:5432/postgres"
    for host in ("127.0.0.1", "localhost", "0.0.0.0"):
        with pytest.raises(BlockedAddress, match="Lily's own database"):
            refuse_own_database(host, 5432, database_url=own)
    refuse_own_database("127.0.0.1", 3306, database_url=own)  # another server on the machine: fine
    with pytest.raises(BlockedAddress, match="Lily's own database"):
        refuse_own_database("localhost", 5433, database_url="postgresql:///lily?host=/tmp&port=5433")
