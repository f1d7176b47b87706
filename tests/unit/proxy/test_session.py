"""The relay's session logic with stand-in transports: what reaches the backend, and when."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
from pathlib import Path

import pytest
from faketransport import FakeTransport
from fulldisk import fail_inserts

from appliance.config import Backend, Capture, TrailSettings
from appliance.model import Owner
from appliance.proxy import states
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import Relay, Session
from appliance.trail.store import Trail


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


PARAMS = b"user\x00agent\x00database\x00orders\x00\x00"
STARTUP = struct.pack("!II", 8 + len(PARAMS), 196608) + PARAMS
QUERY = message(b"Q", b"select 1\x00")


def relay(tmp_path: Path, loop: asyncio.AbstractEventLoop, lookup) -> tuple[Relay, Trail]:
    trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
    return Relay(
        Recorder(trail, loop), Backend("b", "127.0.0.1", 1), Capture(), 1 << 20, lookup
    ), trail


def connected(relay_: Relay) -> tuple[Session, FakeTransport, FakeTransport]:
    """A session whose owner is known and whose backend is connected (no real dial)."""
    session = relay_.session()
    client, server = FakeTransport(), FakeTransport()
    session.client = client
    session.owner = Owner(uid=1000, pid=42, source="sock_diag")
    session.state = states.DIALING  # as the setup leaves it; the tests say when it answers
    return session, client, server


def test_a_command_reaches_the_backend_only_after_its_commit(tmp_path: Path) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay_, trail = relay(tmp_path, loop, lambda a, b: Owner())
        session, _, server = connected(relay_)
        session.data_received(STARTUP)
        session.dialled(server)
        assert server.written == []  # the session record is not committed yet
        await asyncio.sleep(0)
        assert server.written == [STARTUP]
        session.from_server(message(b"R", b"\0\0\0\0") + message(b"Z", b"I"))
        session.data_received(QUERY)
        assert server.written == [STARTUP]
        assert trail.pending >= 1
        await asyncio.sleep(0)
        assert server.written == [STARTUP, QUERY]
        assert trail.pending == 0
        trail.close()

    asyncio.run(scenario())


def test_setup_that_breaks_fails_closed_with_a_native_error(tmp_path: Path) -> None:
    def broken(client: tuple[str, int], local: tuple[str, int]) -> Owner:
        raise RuntimeError("netlink went away")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay_, trail = relay(tmp_path, loop, broken)
        session = relay_.session()
        client = FakeTransport()
        session.connection_made(client)
        session.data_received(STARTUP + QUERY)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if client.closed:
                break
        assert client.closed
        assert b"XX000" in b"".join(client.written)
        assert b"netlink went away" in b"".join(client.written)
        await asyncio.sleep(0.02)
        trail.close()

        db = sqlite3.connect(tmp_path / "trail.db")
        rows = [
            (row[0], json.loads(row[1]))
            for row in db.execute("select type, payload from events where seq > 2 order by seq")
        ]
        types = [t for t, _ in rows if t != "checkpoint"]
        assert types[:3] == ["session_start", "command", "result"]
        assert types[-1] == "session_end"
        command = rows[1][1]
        assert "netlink went away" in command["refused"]
        assert rows[2][1]["status"] == "aborted"

    asyncio.run(scenario())


@pytest.mark.parametrize("chunks", [[STARTUP + QUERY], [STARTUP, QUERY]])
def test_nothing_is_forwarded_when_the_trail_refuses(tmp_path: Path, chunks: list[bytes]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay_, trail = relay(tmp_path, loop, lambda a, b: Owner())
        session, client, server = connected(relay_)

        fail_inserts(trail)
        for chunk in chunks:
            session.data_received(chunk)
        session.dialled(server)
        await asyncio.sleep(0)
        assert server.written == []
        assert b"58030" in b"".join(client.written)
        assert client.closed

    asyncio.run(scenario())


def test_a_command_the_full_backlog_cannot_keep_is_refused_not_forwarded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store failed long enough to fill the backlog, then recovered: the command that
    found the backlog full must not ride out on the next good commit without its record."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay_, trail = relay(tmp_path, loop, lambda a, b: Owner())
        session, client, server = connected(relay_)
        session.data_received(STARTUP)
        session.dialled(server)
        await asyncio.sleep(0)
        session.from_server(message(b"R", b"\0\0\0\0") + message(b"Z", b"I"))
        real = fail_inserts(trail)
        trail.max_backlog = 2
        for n in range(2):
            relay_.recorder.record("error", None, {"where": "test", "message": f"backlog {n}"})
        monkeypatch.setattr(trail, "_conn", real)  # the disk has room again
        secret = message(b"Q", b"select 'never unrecorded'\x00")
        session.data_received(secret)
        await asyncio.sleep(0.01)
        assert secret not in b"".join(server.written)
        assert b"58030" in b"".join(client.written)
        assert client.closed
        trail.close()
        with sqlite3.connect(tmp_path / "trail.db") as db:
            texts = [p for (p,) in db.execute("select payload from events")]
        assert not [t for t in texts if "never unrecorded" in t]
        assert [t for t in texts if "backlog 1" in t]

    asyncio.run(scenario())


def test_an_early_command_the_full_backlog_cannot_keep_refuses_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command sent with the startup packet is recorded once the session is: same rule."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        relay_, trail = relay(tmp_path, loop, lambda a, b: Owner())
        session, client, server = connected(relay_)
        real = fail_inserts(trail)
        trail.max_backlog = 1
        relay_.recorder.record("error", None, {"where": "test", "message": "backlog"})
        monkeypatch.setattr(trail, "_conn", real)
        session.data_received(STARTUP + QUERY)
        session.dialled(server)
        await asyncio.sleep(0.01)
        assert server.written == []
        assert b"58030" in b"".join(client.written)
        trail.close()

    asyncio.run(scenario())
