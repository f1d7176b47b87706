"""Diverted connections: where a connection was going before nftables redirected it, and to
which configured backend that destination belongs.

``witness up`` redirects agents' TCP to protected ranges and ports to the recorder's port on
127.0.0.1 or ::1 (see :mod:`appliance.enforce.nft`). The connection's conntrack entry still
holds the destination the client asked for; ``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (IPv4)
and ``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)`` (IPv6) read it from the accepted socket.
No capability is needed for that.

A socket that did not come through the redirect has either no conntrack entry (the call
fails with ENOENT) or one that was never rewritten, whose original destination is the
recorder's own address: both are reported as :class:`NotDiverted`, and the recorder refuses
the connection.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import Any, Protocol

from appliance.config import Backend

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
SOL_IPV6 = getattr(socket, "SOL_IPV6", socket.IPPROTO_IPV6)
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


class NotDiverted(Exception):
    """The connection did not come through the nftables redirect; the message says why."""


class _Sockopt(Protocol):
    """What the recorder has of an accepted socket (asyncio's and uvloop's wrappers)."""

    @property
    def family(self) -> Any: ...

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes: ...


def parse_sockaddr(raw: bytes) -> tuple[str, int]:
    """A ``struct sockaddr_in`` or ``sockaddr_in6`` as the kernel wrote it, to (address, port).

    The family is in host byte order, the port and the address in network byte order.
    """
    if len(raw) < 4:
        raise ValueError(f"sockaddr of {len(raw)} bytes is too short")
    (family,) = struct.unpack_from("=H", raw)
    (port,) = struct.unpack_from("!H", raw, 2)
    if family == socket.AF_INET and len(raw) >= 8:
        return str(ipaddress.IPv4Address(raw[4:8])), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raise ValueError(f"sockaddr of family {family} and {len(raw)} bytes is not understood")


def original_destination(sock: _Sockopt, local: tuple[str, int]) -> tuple[str, int]:
    """The (address, port) the client connected to before the redirect.

    ``local`` is the socket's own address: a destination equal to it means conntrack saw the
    connection but nothing rewrote it. Raises :class:`NotDiverted`.
    """
    if sock.family == socket.AF_INET6:
        level, option, size = SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6
    else:
        level, option, size = socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN
    try:
        raw = sock.getsockopt(level, option, size)
    except OSError as exc:
        raise NotDiverted(
            f"no original destination (SO_ORIGINAL_DST: {exc.strerror or exc}): "
            "the connection did not come through the witness redirect"
        ) from None
    try:
        address, port = parse_sockaddr(raw)
    except ValueError as exc:
        raise NotDiverted(f"SO_ORIGINAL_DST gave an unusable address: {exc}") from None
    if (ipaddress.ip_address(address), port) == (ipaddress.ip_address(local[0]), local[1]):
        raise NotDiverted(
            f"the connection was made to {address}:{port} itself, "
            "not diverted by the witness redirect"
        )
    return address, port


class Routes:
    """Protected ranges and ports -> backend, as configured (and as ``witness up`` renders).

    Built once; :meth:`backend_for` runs once per diverted connection.
    """

    def __init__(self, backends: list[Backend]) -> None:
        self.routes = [
            (tuple(b.protected_networks), frozenset(b.protected_ports), b) for b in backends
        ]

    def backend_for(self, address: str, port: int) -> Backend | None:
        """The first backend whose protected ranges hold ``address`` and ports ``port``."""
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for networks, ports, backend in self.routes:
            if port in ports and any(ip.version == n.version and ip in n for n in networks):
                return backend
        return None
