"""What a client can make the relay hold, and for how long: framing is the parser's, held
bytes are bounded, and a backend that never answers is given up on."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

from faketransport import FakeTransport

from appliance.config import Backend, Capture, TrailSettings
from appliance.model import Owner
from appliance.proxy import server, states
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import Relay
from appliance.trail.store import Trail


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


PARAMS = b"user\x00agent\x00database\x00orders\x00\x00"
STARTUP = struct.pack("!II", 8 + len(PARAMS), 196608) + PARAMS
SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSS_REQUEST = struct.pack("!II", 8, 80877104)


class Counting(FakeTransport):
    """Also counts pause_reading and resume_reading calls."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True


def relay(tmp_path: Path, backend: Backend) -> tuple[Relay, Trail]:
    trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
    loop = asyncio.get_running_loop()
    lookup = lambda a, b: Owner(uid=1000, pid=42, source="sock_diag")  # noqa: E731
    return Relay(Recorder(trail, loop), backend, Capture(), 1 << 20, lookup), trail


def test_negotiation_requests_split_across_reads_never_reach_the_backend(tmp_path: Path) -> None:
    stream = GSS_REQUEST + SSL_REQUEST + STARTUP + message(b"p", b"secret\x00")
    # Every split of the stream: the backend must get the startup packet and the password,
    # and not one byte of either request, wherever the reads fall.
    for cut in range(1, len(stream)):

        async def scenario(cut: int = cut) -> None:
            relay_, trail = relay(tmp_path / str(cut), Backend("b", "127.0.0.1", 1))
            session = relay_.session()
            client, backend = Counting(), FakeTransport()
            session.client = client
            session.owner = Owner(uid=1000, pid=42, source="sock_diag")
            session.state = states.DIALING
            session.dialled(backend)
            session.data_received(stream[:cut])
            session.data_received(stream[cut:])
            await asyncio.sleep(0)
            assert b"".join(backend.written) == stream[16:], cut
            assert client.written == [b"N", b"N"]
            trail.close()

        (tmp_path / str(cut)).mkdir()
        asyncio.run(scenario())


def test_a_flood_before_the_session_starts_pauses_the_client(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay_, trail = relay(tmp_path, Backend("b", "127.0.0.1", 1))
        session = relay_.session()
        client, backend = Counting(), FakeTransport()
        session.client = client
        session.owner = Owner(uid=1000, pid=42, source="sock_diag")
        session.state = states.DIALING
        # No backend yet: nothing can start, so everything the client sends is held.
        copy = message(b"Q", b"copy t from stdin\x00")
        session.data_received(STARTUP + copy)
        chunk = message(b"d", b"x" * 65531)
        sent = 0
        while client.reading:
            session.data_received(chunk)
            sent += len(chunk)
            assert sent <= server.HOLD_LIMIT + len(chunk), "the client was never paused"
        assert session.held_bytes <= server.HOLD_LIMIT + len(chunk)
        # The backend comes: the session starts, what was held goes, and reading resumes.
        session.dialled(backend)
        await asyncio.sleep(0)
        assert client.reading and client.pauses == 1
        assert sum(len(w) for w in backend.written) == len(STARTUP + copy) + sent
        trail.close()

    asyncio.run(scenario())


def test_a_paused_backend_and_a_full_hold_each_keep_the_client_paused(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay_, trail = relay(tmp_path, Backend("b", "127.0.0.1", 1))
        session = relay_.session()
        client = Counting()
        session.client = client
        session.pause_client()  # the backend's buffer is full
        session._pause(server._HOLDING)
        session._resume(server._HOLDING)
        assert not client.reading  # still full
        session.resume_client()
        assert client.reading
        trail.close()

    asyncio.run(scenario())


def test_a_backend_that_never_answers_is_refused_after_the_timeout(tmp_path: Path) -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so a connect
    # to it neither succeeds nor fails.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(0)
    port = silent.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)

    async def scenario() -> None:
        relay_, trail = relay(tmp_path, Backend("b", "127.0.0.1", port, connect_timeout=0.3))
        session = relay_.session()
        client = FakeTransport()
        session.connection_made(client)
        session.data_received(STARTUP)
        for _ in range(300):
            await asyncio.sleep(0.01)
            if client.closed:
                break
        assert client.closed
        sent = b"".join(client.written)
        assert b"C08006\x00" in sent and b"no answer within 0.3 s" in sent
        trail.close()

    try:
        asyncio.run(scenario())
    finally:
        for s in (*fillers, silent):
            s.close()
