"""sock_diag's exact lookup: the request and answer as bytes, then against live sockets."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

import pytest

from appliance.enforce import sockdiag

SO_COOKIE = 57


def answer(state: int, uid: int, inode: int, cookie: int, cgroup_id: int | None) -> bytes:
    body = struct.pack("=BBBB", socket.AF_INET, state, 0, 0)
    body += struct.pack(">HH16s16s", 40000, 5432, b"\0" * 16, b"\0" * 16)
    body += struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32)
    body += struct.pack("=IIIII", 0, 0, 0, uid, inode)
    body += struct.pack("=HH", 4 + 4, 1) + b"abcd"  # an attribute nobody asked about
    if cgroup_id is not None:
        body += struct.pack("=HHQ", 12, sockdiag.INET_DIAG_CGROUP_ID, cgroup_id)
    return struct.pack("=IHHII", 16 + len(body), sockdiag.SOCK_DIAG_BY_FAMILY, 0, 1, 0) + body


def test_the_request_names_the_exact_four_tuple() -> None:
    raw = sockdiag.request(("10.0.0.1", 40000), ("10.0.0.5", 5432))
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", raw)
    assert (length, kind, flags, seq) == (len(raw), 20, 1, 1)  # no NLM_F_DUMP: one socket
    family, proto = struct.unpack_from("=BB", raw, 16)
    assert (family, proto) == (socket.AF_INET, socket.IPPROTO_TCP)
    sport, dport, src, dst = struct.unpack_from(">HH16s16s", raw, 24)
    assert (sport, dport) == (40000, 5432)
    assert src[:4] == bytes([10, 0, 0, 1]) and dst[:4] == bytes([10, 0, 0, 5])
    assert raw[-8:] == b"\xff" * 8  # no cookie: whatever the socket's is
    with pytest.raises(ValueError, match="not of one address family"):
        sockdiag.request(("10.0.0.1", 1), ("::1", 2))


def test_an_answer_gives_state_owner_cookie_and_cgroup() -> None:
    found = sockdiag.parse(answer(1, 1001, 777, (5 << 32) | 9, 4242))
    assert found == sockdiag.Socket(1, 1001, 777, (5 << 32) | 9, 4242)
    assert found is not None and found.connected
    assert sockdiag.parse(answer(1, 1001, 777, 9, None)) == sockdiag.Socket(1, 1001, 777, 9, None)


@pytest.mark.parametrize(("state", "inode"), [(6, 0), (7, 0), (10, 55), (1, 0)])
def test_time_wait_listeners_and_sockets_no_one_holds_are_not_connected(
    state: int, inode: int
) -> None:
    found = sockdiag.parse(answer(state, 0, inode, 1, None))
    assert found is not None and not found.connected


def test_not_found_is_none_and_other_errors_say_why() -> None:
    def error(code: int) -> bytes:
        return struct.pack("=IHHIIi", 20, sockdiag.NLMSG_ERROR, 0, 1, 0, -code)

    assert sockdiag.parse(error(errno.ENOENT)) is None
    with pytest.raises(sockdiag.DiagError, match=os.strerror(errno.EPERM)):
        sockdiag.parse(error(errno.EPERM))
    with pytest.raises(sockdiag.DiagError, match="shorter than its header"):
        sockdiag.parse(b"\0" * 7)
    with pytest.raises(sockdiag.DiagError, match="not ours"):
        sockdiag.parse(answer(1, 0, 1, 1, None), seq=2)


def cookie(sock: socket.socket) -> int:
    return int.from_bytes(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), "little")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_live_socket_is_found_with_its_own_cookie_and_uid(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as listener:
        listener.bind((host, 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
        local, remote = client.getsockname()[:2], listener.getsockname()[:2]
        found = sockdiag.find(local, remote)
        assert found is not None and found.connected
        assert found.cookie == cookie(client) and found.uid == os.geteuid()
        assert found.inode == os.fstat(client.fileno()).st_ino
        # The server's end of the same connection is another socket, with its own cookie.
        other = sockdiag.find(remote, local)
        assert other is not None and other.cookie == cookie(server) != found.cookie
        assert sockdiag.find(local, (host, 1)) is None
        # Closed first by the client, its socket passes through TIME_WAIT: no owner there.
        client.close()
        server.close()
        deadline = time.monotonic() + 5
        while (gone := sockdiag.find(local, remote)) is not None and gone.connected:
            assert time.monotonic() < deadline
            time.sleep(0.01)
