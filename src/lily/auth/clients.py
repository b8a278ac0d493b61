"""Who is asking: the client address behind trusted proxies, and the keys login attempts are counted by."""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 hands a single host a whole /64: counting by address would let one client rotate freely.
IPV6_PREFIX = 64


def parse_networks(spec: str) -> tuple[Network, ...]:
    """``"10.0.0.1, 192.168.0.0/16, ::1"`` → networks; a bad entry raises ValueError naming it."""
    networks = []
    for entry in (part.strip() for part in spec.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"LILY_TRUSTED_PROXIES: {entry!r} is not an address or network") from exc
    return tuple(networks)


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(value: str, trusted: Sequence[Network]) -> bool:
    ip = _ip(value)
    return ip is not None and any(ip in network for network in trusted)


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The client's address: the peer's, unless the peer is a trusted proxy.

    Then ``X-Forwarded-For`` is read from the right (each proxy appends the address it saw), skipping
    trusted proxies; the first hop that is not one is the client. Anything a client wrote further left
    is never believed, and from an untrusted peer the header is ignored altogether.
    """
    if peer is None:
        return "unknown"
    if not _trusted(peer, trusted):
        return peer
    hops = [hop.strip() for header in forwarded_for for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return _shown(hop)
    return _shown(hops[0]) if hops else peer


def _shown(hop: str) -> str:
    # A hop a trusted proxy passed on but that is no address: keep it as a key, bounded and printable.
    ip = _ip(hop)
    if ip is not None:
        return str(ip)
    return hop[:64] if hop.isprintable() else "invalid"


def address_key(address: str) -> bytes:
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        address = str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    elif isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        address = str(ip.ipv4_mapped)
    return hashlib.sha256(b"address\0" + address.encode("utf-8", "surrogatepass")).digest()


def account_key(tenant_id: str, username: str) -> bytes:
    return hashlib.sha256(b"account\0" + f"{tenant_id}\0{username}".encode("utf-8", "surrogatepass")).digest()
