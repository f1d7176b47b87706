"""CancelRequests: the sender is attributed and admitted like any connection, and recorded as
who sent it, before anything reaches a backend; the request goes on exactly as it came."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Any

from faketransport import FakeTransport

from appliance.config import Backend, Capture, TrailSettings
from appliance.identity.bindings import Bindings, Caller
from appliance.model import Identity, Owner
from appliance.policy.access import Access
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import Relay, Session
from appliance.trail.store import Trail

ALICE = Identity("https://idp.test", "alice-sub", "alice@example.test")
BOB = Identity("https://idp.test", "bob-sub", "bob@example.test")
AGENT_A = Owner(uid=1001, pid=41, cgroup="/witness-agents/run-a", cgroup_id=11, source="ebpf")
AGENT_B = Owner(uid=1002, pid=42, cgroup="/witness-agents/run-b", cgroup_id=12, source="ebpf")
STRANGER = Owner(uid=1003, pid=43, cgroup="/user.slice", cgroup_id=13, source="sock_diag")
SECRET = 0x5EC12E7


def cancel_packet(pid: int, secret: bytes) -> bytes:
    body = struct.pack("!II", 80877102, pid) + secret
    return struct.pack("!I", len(body) + 4) + body


class Listener:
    """A real socket standing in for the backend: keeps every connection's bytes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    async def start(self) -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.received.append(await reader.read())
            writer.close()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


def events(path: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    db = sqlite3.connect(path)
    rows = db.execute(
        "select type, session, payload from events"
        " where type not in ('checkpoint', 'trail') order by seq"
    )
    return [(t, s, json.loads(p)) for t, s, p in rows]


def bindings() -> Bindings:
    found = Bindings(clock=lambda: 1000.0)
    found.bind_cgroup("/witness-agents/run-a", 11, ALICE, None, Caller(1, 1001, 1001))
    found.bind_cgroup("/witness-agents/run-b", 12, BOB, None, Caller(1, 1002, 1002))
    return found


async def setup(
    tmp_path: Path, owners: dict[int, Owner], gate: threading.Event | None = None
) -> tuple[Relay, Session, Listener, Trail]:
    """A relay whose owner lookup answers by client port, and a live target session of
    ALICE's whose backend key is registered."""
    loop = asyncio.get_running_loop()
    listener = Listener()
    port = await listener.start()
    trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))

    def lookup(client: tuple[str, int], local: tuple[str, int]) -> Owner:
        if gate is not None:
            assert gate.wait(5)
        return owners[client[1]]

    relay = Relay(
        Recorder(trail, loop),
        Backend("orders", "127.0.0.1", port),
        Capture(),
        1 << 20,
        lookup,
        access=Access(bindings(), "refuse"),
    )
    target = relay.session()
    target.identity = {"issuer": ALICE.issuer, "subject": ALICE.subject, "email": ALICE.email}
    target.key = (777, SECRET)
    relay.keys[target.key] = target
    return relay, target, listener, trail


async def send_cancel(relay: Relay, port: int, chunks: list[bytes]) -> FakeTransport:
    session = relay.session()
    client = FakeTransport({"peername": ("127.0.0.1", port), "sockname": ("127.0.0.1", 5432)})
    session.connection_made(client)
    for chunk in chunks:
        session.data_received(chunk)
    return client


async def settle(listener: Listener, client: FakeTransport) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if client.closed and listener.received:
            break
    await asyncio.sleep(0.05)


def test_a_cancel_is_recorded_with_its_senders_owner_and_delivered_whole(tmp_path: Path) -> None:
    packet = cancel_packet(777, SECRET.to_bytes(4, "big"))

    async def scenario() -> None:
        relay, _, listener, trail = await setup(tmp_path, {50001: AGENT_A})
        # Split across reads: the relay must deliver the request as sent, not a slice.
        client = await send_cancel(relay, 50001, [packet[:5], packet[5:11], packet[11:]])
        await settle(listener, client)
        assert listener.received == [packet]
        assert client.closed
        trail.close()

    asyncio.run(scenario())
    (cancel,) = [p for t, _, p in events(tmp_path / "trail.db") if t == "command"]
    assert cancel["kind"] == "cancel" and cancel["text"] == "cancel backend pid 777"
    assert cancel["owner"]["uid"] == 1001 and cancel["owner"]["cgroup_id"] == 11
    assert cancel["identity"]["subject"] == "alice-sub"
    assert cancel["client"] == "127.0.0.1:50001"


def test_a_long_protocol_3_2_cancel_key_is_delivered_whole(tmp_path: Path) -> None:
    secret = bytes(range(32))

    async def scenario() -> None:
        relay, target, listener, trail = await setup(tmp_path, {50001: AGENT_A})
        relay.keys.pop((777, SECRET))
        relay.keys[(777, int.from_bytes(secret, "big"))] = target
        client = await send_cancel(relay, 50001, [cancel_packet(777, secret)])
        await settle(listener, client)
        assert listener.received == [cancel_packet(777, secret)]
        trail.close()

    asyncio.run(scenario())


def test_nothing_is_delivered_or_recorded_before_the_sender_is_known(tmp_path: Path) -> None:
    gate = threading.Event()

    async def scenario() -> None:
        relay, _, listener, trail = await setup(tmp_path, {50001: AGENT_A}, gate)
        client = await send_cancel(relay, 50001, [cancel_packet(777, SECRET.to_bytes(4, "big"))])
        await asyncio.sleep(0.2)
        assert listener.received == []
        assert trail.pending == 0 and not events(tmp_path / "trail.db")
        gate.set()
        await settle(listener, client)
        assert len(listener.received) == 1
        trail.close()

    asyncio.run(scenario())


def test_an_unbound_sender_is_refused_and_recorded(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay, _, listener, trail = await setup(tmp_path, {50003: STRANGER})
        client = await send_cancel(relay, 50003, [cancel_packet(777, SECRET.to_bytes(4, "big"))])
        await settle(listener, client)
        assert listener.received == []
        assert client.closed
        trail.close()

    asyncio.run(scenario())
    recorded = events(tmp_path / "trail.db")
    assert not [p for t, _, p in recorded if t == "command"]
    (error,) = [p for t, _, p in recorded if t == "error"]
    assert error["where"] == "cancel"
    assert "no identity is bound" in error["message"]
    assert error["owner"]["uid"] == 1003


def test_another_identity_may_not_cancel_a_session(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay, _, listener, trail = await setup(tmp_path, {50002: AGENT_B})
        client = await send_cancel(relay, 50002, [cancel_packet(777, SECRET.to_bytes(4, "big"))])
        await settle(listener, client)
        assert listener.received == []
        trail.close()

    asyncio.run(scenario())
    (error,) = [p for t, _, p in events(tmp_path / "trail.db") if t == "error"]
    assert "another identity" in error["message"]
    assert error["identity"]["subject"] == "bob-sub"
    assert error["owner"]["uid"] == 1002


def test_a_cancel_for_no_live_session_is_recorded_with_its_sender(tmp_path: Path) -> None:
    async def scenario() -> None:
        relay, _, listener, trail = await setup(tmp_path, {50001: AGENT_A})
        client = await send_cancel(relay, 50001, [cancel_packet(999, b"\0\0\0\1")])
        await settle(listener, client)
        assert listener.received == []
        trail.close()

    asyncio.run(scenario())
    (error,) = [p for t, _, p in events(tmp_path / "trail.db") if t == "error"]
    assert "backend pid 999" in error["message"]
    assert error["identity"]["subject"] == "alice-sub"
