"""The transparent listener's sessions with stand-in client sockets: where a diverted session
is relayed, what is recorded, and what is refused (the kernel side is in tests/lab)."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import sqlite3
import struct
from pathlib import Path
from typing import Any, cast

from faketransport import FakeTransport

from appliance import config
from appliance.enforce.divert import Routes
from appliance.model import Owner
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import Relay
from appliance.trail.store import Trail

PARAMS = b"user\x00agent\x00database\x00orders\x00\x00"
STARTUP = struct.pack("!II", 8 + len(PARAMS), 196608) + PARAMS
LISTENER = ("127.0.0.1", 15432)
PEER = ("10.77.0.1", 40000)


def sockaddr_in(address: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(address)


class DivertedSocket:
    """What SO_ORIGINAL_DST answers for one accepted connection."""

    family = socket.AF_INET

    def __init__(self, answer: bytes | OSError) -> None:
        self.answer = answer

    def getsockopt(self, level: int, optname: int, buflen: int) -> bytes:
        if isinstance(self.answer, OSError):
            raise self.answer
        return self.answer


def routes(port: int) -> Routes:
    settings = config.parse(
        {
            "backend": [
                {
                    "name": "orders",
                    "address": "127.0.0.1",
                    "port": port,
                    "protect": ["127.0.0.0/8"],
                }
            ],
            "enforce": {"service_user": "root"},
        }
    )
    return Routes(list(settings.backends.values()))


def events(trail_path: Path) -> list[tuple[str, dict[str, Any]]]:
    db = sqlite3.connect(trail_path)
    try:
        rows = db.execute("select type, payload from events order by seq").fetchall()
    finally:
        db.close()
    return [(t, json.loads(p)) for t, p in rows if t not in ("checkpoint", "trail")]


def run(
    tmp_path: Path, answer: bytes | OSError, backend_port: int
) -> tuple[FakeTransport, list[Any]]:
    """One diverted session: the client sends its startup; return what it got and the trail."""
    looked_up: list[tuple[tuple[str, int], tuple[str, int]]] = []

    def lookup(client: tuple[str, int], seen: tuple[str, int]) -> Owner:
        looked_up.append((client, seen))
        return Owner(uid=65534, pid=4242, exe="/usr/bin/psql", source="sock_diag")

    async def scenario() -> FakeTransport:
        loop = asyncio.get_running_loop()
        trail = Trail.open(config.TrailSettings.beside(tmp_path / "trail.db"))
        relay = Relay(
            Recorder(trail, loop),
            None,
            config.Capture(),
            1 << 20,
            lookup,
            routes=routes(backend_port),
        )
        session = relay.session()
        client = FakeTransport(
            {"socket": DivertedSocket(answer), "peername": PEER, "sockname": LISTENER}
        )
        session.connection_made(cast(asyncio.BaseTransport, client))
        session.data_received(STARTUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if client.closed or session.started:
                break
        await asyncio.sleep(0.02)  # the lazy commit
        session.end("test over")
        await asyncio.sleep(0.02)
        trail.close()
        return client

    client = asyncio.run(scenario())
    return client, [looked_up, *events(tmp_path / "trail.db")]


def test_a_diverted_session_goes_to_its_original_destination_and_records_it(
    tmp_path: Path,
) -> None:
    backend = socket.create_server(("127.0.0.2", 0))
    port = backend.getsockname()[1]
    try:
        client, (looked_up, *trail) = run(tmp_path, sockaddr_in("127.0.0.2", port), port)
        backend.settimeout(2)
        conn, _ = backend.accept()  # dialled at 127.0.0.2, not the backend's 127.0.0.1
        assert conn.getsockname() == ("127.0.0.2", port)
        assert conn.recv(100) == STARTUP
        conn.close()
    finally:
        backend.close()
    assert not client.written  # no refusal
    # The client's socket is connected to where it meant to go, and is looked up so.
    assert looked_up == [(PEER, ("127.0.0.2", port))]
    kind, start = trail[0]
    assert kind == "session_start"
    assert start["destination"] == f"127.0.0.2:{port}"
    assert start["backend"]["name"] == "orders"
    assert start["diverted"] is True
    assert start["listener"] == "127.0.0.1:15432"
    assert start["owner"]["pid"] == 4242


def test_a_destination_no_backend_protects_is_refused_and_recorded(tmp_path: Path) -> None:
    client, (looked_up, *trail) = run(tmp_path, sockaddr_in("10.9.9.9", 5432), 5432)
    sent = b"".join(client.written)
    assert sent.startswith(b"E")
    assert b"FATAL" in sent and b"08004" in sent
    assert b"10.9.9.9:5432 is not a protected backend" in sent
    assert client.closed
    assert looked_up == [(PEER, ("10.9.9.9", 5432))]
    kinds = [k for k, _ in trail]
    assert kinds == ["session_start", "session_end"]
    start, end = trail[0][1], trail[1][1]
    assert start["backend"] is None
    assert start["destination"] == "10.9.9.9:5432"
    assert start["owner"]["uid"] == 65534
    assert "not a protected backend" in end["reason"]


def test_a_connection_that_was_not_redirected_is_refused_and_recorded(tmp_path: Path) -> None:
    client, (looked_up, *trail) = run(tmp_path, OSError(errno.ENOENT, "No such file"), 5432)
    sent = b"".join(client.written)
    assert b"FATAL" in sent and b"08004" in sent
    assert b"did not come through the witness redirect" in sent
    assert looked_up == [(PEER, LISTENER)]
    start, end = trail[0][1], trail[-1][1]
    assert start["destination"] is None
    assert "did not come through the witness redirect" in end["reason"]
