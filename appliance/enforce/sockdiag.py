"""sock_diag: the kernel's own view of one TCP socket of this host, found by its exact 4-tuple.

One ``SOCK_DIAG_BY_FAMILY`` request without ``NLM_F_DUMP`` makes the kernel look the socket
up in its connection table (``inet_diag_find_one_icsk``) rather than list every socket, so
the answer costs one netlink round trip. It gives the socket's state, its owning uid and
inode, its cookie (the same number ``bpf_get_socket_cookie`` gave the eBPF programs) and
the cgroup id the socket was created in.

The request is built and the answer parsed by pure functions; :func:`find` does the one
netlink exchange. A socket in TIME_WAIT has no owner any more (the kernel reports uid 0 and
inode 0 for it), and a lookup that finds no connection may fall back to a listener on the
same port: callers look at ``state`` and trust only :attr:`Socket.connected` ones.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_CGROUP_ID = 21
NO_COOKIE = 0xFFFFFFFFFFFFFFFF  # INET_DIAG_NOCOOKIE: match whatever the cookie is
TIMEOUT = 1.0

# TCP states (include/net/tcp_states.h) of a socket whose process still holds it.
STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}
CONNECTED = frozenset({1, 4, 5, 8, 9, 11})

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid (host order)
_REQUEST = struct.Struct("=BBBBI")  # family, protocol, ext, pad, states
_SOCKID = struct.Struct(">HH16s16s")  # sport, dport, src, dst (network order)
_TAIL = struct.Struct("=III")  # if, then the cookie as two u32, low half first
_MSG = struct.Struct("=BBBB")  # family, state, timer, retrans
_MSG_REST = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_ATTR = struct.Struct("=HH")
_MSG_SIZE = _MSG.size + _SOCKID.size + _TAIL.size + _MSG_REST.size


class DiagError(Exception):
    """The kernel could not be asked, or answered something unexpected."""


@dataclass(frozen=True, slots=True)
class Socket:
    """One socket as sock_diag reports it."""

    state: int
    uid: int
    inode: int
    cookie: int
    cgroup_id: int | None

    @property
    def connected(self) -> bool:
        """Held by a process (not TIME_WAIT or CLOSE, which have no owner) and connected."""
        return self.state in CONNECTED and self.inode != 0

    def describe(self) -> str:
        state = STATES.get(self.state, str(self.state))
        cgroup = "" if self.cgroup_id is None else f", cgroup id {self.cgroup_id}"
        return f"{state}, uid {self.uid}, inode {self.inode}, cookie {self.cookie}{cgroup}"


def _packed(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed.ljust(16, b"\0")


def request(local: tuple[str, int], remote: tuple[str, int], seq: int = 1) -> bytes:
    """The netlink message asking for the TCP socket bound to ``local`` connected to ``remote``."""
    family, src = _packed(local[0])
    remote_family, dst = _packed(remote[0])
    if family != remote_family:
        raise ValueError(f"{local[0]} and {remote[0]} are not of one address family")
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
        + _SOCKID.pack(local[1], remote[1], src, dst)
        + _TAIL.pack(0, NO_COOKIE & 0xFFFFFFFF, NO_COOKIE >> 32)
    )
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + body


def parse(answer: bytes, seq: int = 1) -> Socket | None:
    """The socket in a sock_diag answer; None when the kernel found none (ENOENT)."""
    if len(answer) < _HEADER.size:
        raise DiagError(f"a {len(answer)}-byte netlink answer is shorter than its header")
    length, kind, _flags, got_seq, _pid = _HEADER.unpack_from(answer)
    if got_seq != seq or not _HEADER.size <= length <= len(answer):
        raise DiagError(f"a netlink answer for request {got_seq} of {length} bytes, not ours")
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", answer, _HEADER.size)
        if -code == errno.ENOENT:
            return None
        raise DiagError(f"sock_diag refused the request: {os.strerror(-code)}")
    if kind != SOCK_DIAG_BY_FAMILY or length < _HEADER.size + _MSG_SIZE:
        raise DiagError(f"an unexpected netlink answer (type {kind}, {length} bytes)")
    pos = _HEADER.size
    _family, state, _timer, _retrans = _MSG.unpack_from(answer, pos)
    pos += _MSG.size + _SOCKID.size
    _if, low, high = _TAIL.unpack_from(answer, pos)
    cookie = low | high << 32
    pos += _TAIL.size
    *_, uid, inode = _MSG_REST.unpack_from(answer, pos)
    pos += _MSG_REST.size
    cgroup_id = None
    while pos + _ATTR.size <= length:
        size, kind = _ATTR.unpack_from(answer, pos)
        if size < _ATTR.size:
            break
        if kind == INET_DIAG_CGROUP_ID and size >= _ATTR.size + 8:
            (cgroup_id,) = struct.unpack_from("=Q", answer, pos + _ATTR.size)
        pos += (size + 3) & ~3
    return Socket(state, uid, inode, cookie, cgroup_id)


def find(local: tuple[str, int], remote: tuple[str, int]) -> Socket | None:
    """The TCP socket of this network namespace bound to ``local`` and connected to ``remote``.

    None when there is none. DiagError when the kernel cannot be asked.
    """
    message = request(local, remote)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(TIMEOUT)
            nl.sendto(message, (0, 0))
            answer = nl.recv(65536)
    except OSError as exc:
        raise DiagError(f"sock_diag failed: {exc.strerror or exc}") from None
    return parse(answer)
