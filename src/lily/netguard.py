"""The address guard: every outbound connection Lily makes on a user's behalf goes through it (SSRF).

A tenant's steward can make Lily call any URL (a webhook, a Jira base URL) and a connector any host (a
crawl target). Without a guard that reaches the cloud metadata service (169.254.169.254), the admin
ports on loopback, or the private network behind Lily. So, unless ``LILY_ALLOW_PRIVATE_TARGETS=true``
(local and test use), every address a name resolves to must be public: loopback, private (RFC 1918,
ULA), shared (100.64/10), link-local, multicast, unspecified, reserved and documentation ranges are
refused — checked after DNS resolution, on all the addresses, and for IPv4-mapped IPv6 on the mapped
address.

- HTTP: :func:`guarded_client` is an ``httpx.AsyncClient`` whose transport checks every request, each
  redirect hop included (httpx sends every hop through the transport), and then connects to the very
  address it checked (the URL's host is swapped for it; the ``Host`` header and TLS SNI keep the name),
  so a DNS answer that changes between check and connect (rebinding) cannot slip through.
- Other protocols (a connector opening a database connection): :func:`check_target` (async) or
  :func:`check_target_sync` with the host and port; connect to one of the addresses it returns.
- :func:`refuse_own_database`: a crawl target that is Lily's own PostgreSQL is refused always, private
  targets allowed or not (a tenant must never read another's rows through a connector).

Imports nothing of Lily, so connectors, channels and the dispatcher all use it without layering issues.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Iterable
from typing import Any

import httpx
from psycopg.conninfo import conninfo_to_dict

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class BlockedAddress(Exception):
    """A target Lily refuses to connect to; the message names the host and why, never credentials."""


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (None when it is)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return refusal(address.ipv4_mapped)
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("not globally routable", not address.is_global),
    )
    for why, hit in checks:
        if hit:
            return why
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _checked(host: str, addresses: Iterable[str], allow_private: bool) -> list[str]:
    out = list(dict.fromkeys(addresses))
    if not out:
        raise BlockedAddress(f"{host!r} does not resolve to any address")
    if not allow_private:
        for text in out:
            why = refusal(ipaddress.ip_address(text.split("%", 1)[0]))
            if why:
                raise BlockedAddress(
                    f"refused to connect to {host!r}: it resolves to {text}, a {why} address "
                    "(LILY_ALLOW_PRIVATE_TARGETS=true allows it)"
                )
    return out


def _from_getaddrinfo(infos: list[Any]) -> list[str]:
    return [str(info[4][0]) for info in infos]


async def check_target(host: str, port: int, *, allow_private: bool) -> list[str]:
    """Every address ``host`` resolves to, all of them checked; :class:`BlockedAddress` otherwise."""
    literal = _literal(host)
    if literal is not None:
        return _checked(host, [str(literal)], allow_private)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedAddress(f"{host!r} does not resolve: {exc}") from None
    return _checked(host, _from_getaddrinfo(infos), allow_private)


def check_target_sync(host: str, port: int, *, allow_private: bool) -> list[str]:
    """:func:`check_target` for synchronous callers."""
    literal = _literal(host)
    if literal is not None:
        return _checked(host, [str(literal)], allow_private)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise BlockedAddress(f"{host!r} does not resolve: {exc}") from None
    return _checked(host, _from_getaddrinfo(infos), allow_private)


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks each request's host, then connects to the checked address."""

    def __init__(self, *, allow_private: bool, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.allow_private = allow_private
        self._inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await check_target(host, port, allow_private=self.allow_private)
        if _literal(host) is None:
            # Pin the connection to the address just checked; Host and SNI still carry the name.
            request.url = url.copy_with(host=addresses[0])
            if url.scheme == "https":
                request.extensions = {**request.extensions, "sni_hostname": host}
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def quiet_http_logs() -> None:
    """Keep outbound URLs out of the log: httpx logs every request's full URL at INFO (and httpcore its
    traffic at DEBUG), and URLs can embed secrets (a Slack incoming webhook's path is its credential)."""
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:  # its own level, whatever the root's (NOTSET is 0)
            logger.setLevel(logging.WARNING)


def guarded_client(*, allow_private: bool, timeout: float = 15.0, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` every request of which (and every redirect hop) passes the guard. Building
    one also quiets httpx's request log (:func:`quiet_http_logs`)."""
    quiet_http_logs()
    limits = kwargs.pop("limits", httpx.Limits(max_connections=200, max_keepalive_connections=100))
    transport = GuardedTransport(allow_private=allow_private, inner=httpx.AsyncHTTPTransport(limits=limits))
    return httpx.AsyncClient(transport=transport, timeout=timeout, **kwargs)


def _database_endpoints(database_url: str) -> tuple[list[str], int]:
    params = conninfo_to_dict(database_url)
    host = str(params.get("host") or "localhost")
    port = int(str(params.get("port") or 5432).split(",")[0])
    hosts = host.split(",")
    addresses: list[str] = []
    for h in hosts:
        if h.startswith("/"):
            # A Unix socket: the server listens on loopback too, on the same port, as far as we know.
            addresses.extend(["127.0.0.1", "::1"])
            continue
        try:
            addresses.extend(check_target_sync(h, port, allow_private=True))
        except BlockedAddress:
            continue
    return addresses, port


def refuse_own_database(host: str, port: int, *, database_url: str) -> None:
    """:class:`BlockedAddress` when ``host:port`` is the server holding Lily's own database."""
    own, own_port = _database_endpoints(database_url)
    if port != own_port:
        return
    try:
        target = check_target_sync(host, port, allow_private=True)
    except BlockedAddress:
        return  # it cannot be reached at all, so it is not ours either
    own_ips = {ipaddress.ip_address(a.split("%", 1)[0]) for a in own}
    for text in target:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        local = address.is_loopback or address.is_unspecified  # 0.0.0.0 connects to this machine
        if address in own_ips or (local and any(o.is_loopback for o in own_ips)):
            raise BlockedAddress(f"refused to connect to {host!r}:{port}: it is Lily's own database server")
