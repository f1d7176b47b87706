"""The relay asks the connect-time policy before it dials: refused connections never reach
the backend, and every record of an admitted one carries its identity."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

from faketransport import FakeTransport

from appliance.config import Backend, Capture, TrailSettings
from appliance.identity.bindings import Bindings, Caller
from appliance.model import Identity, Owner
from appliance.policy.access import Access
from appliance.policy.limits import Limits
from appliance.proxy.recorder import Recorder
from appliance.proxy.server import Relay
from appliance.trail.store import Trail


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


PARAMS = b"user\x00agent\x00database\x00orders\x00\x00"
STARTUP = struct.pack("!II", 8 + len(PARAMS), 196608) + PARAMS
QUERY = message(b"Q", b"select 1\x00")
AGENT = Owner(uid=1001, pid=42, cgroup="/witness-agents/run-1", cgroup_id=9, source="ebpf")
ALICE = Identity("https://idp.test", "alice-sub", "alice@example.test", "Alice", ("dba",))


class Backend_:
    """A real listening socket standing in for the backend: it counts who reached it."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received = b""

    async def start(self) -> int:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            self.received += await reader.read(65536)
            writer.write(message(b"R", b"\0\0\0\0") + message(b"Z", b"I"))
            await writer.drain()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


def events(path: Path) -> list[tuple[str, dict[str, Any]]]:
    db = sqlite3.connect(path)
    rows = db.execute(
        "select type, payload from events where type not in ('checkpoint', 'trail') order by seq"
    )
    return [(t, json.loads(p)) for t, p in rows]


async def connect(
    tmp_path: Path, backend: Backend | None, access: Access, owner: Owner = AGENT
) -> tuple[Backend_, FakeTransport, Trail]:
    loop = asyncio.get_running_loop()
    fake = Backend_()
    port = await fake.start()
    trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
    target = backend or Backend("orders", "127.0.0.1", port)
    target = Backend(
        target.name,
        "127.0.0.1",
        port,
        allow_identities=target.allow_identities,
        allow_groups=target.allow_groups,
    )
    relay = Relay(
        Recorder(trail, loop), target, Capture(), 1 << 20, lambda a, b: owner, access=access
    )
    session = relay.session()
    client = FakeTransport()
    session.connection_made(client)
    session.data_received(STARTUP + QUERY)
    for _ in range(100):
        await asyncio.sleep(0.01)
        if client.closed or fake.received:
            break
    await asyncio.sleep(0.02)
    return fake, client, trail


def test_an_unbound_agent_gets_28000_and_the_backend_never_hears_of_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        gate = Access(Bindings(), "refuse")
        fake, client, trail = await connect(tmp_path, None, gate)
        assert client.closed
        sent = b"".join(client.written)
        assert sent.startswith(b"E") and b"C28000\x00" in sent
        assert b"run `witness login`" in sent
        assert fake.accepted == 0
        trail.close()

    asyncio.run(scenario())
    recorded = events(tmp_path / "trail.db")
    kinds = [t for t, _ in recorded]
    assert kinds[0] == "session_start" and kinds[-1] == "session_end"
    start = recorded[0][1]
    assert start["identity"] is None
    assert start["owner"]["uid"] == 1001 and start["owner"]["cgroup_id"] == 9
    assert start["backend"]["name"] == "orders"
    assert start["refused"]["code"] == "28000"
    command = next(p for t, p in recorded if t == "command")
    assert "no identity is bound" in command["refused"]


def test_a_bound_agent_is_relayed_and_every_record_names_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        bindings = Bindings(clock=lambda: 1000.0)
        bindings.bind_cgroup("/witness-agents/run-1", 9, ALICE, None, Caller(1, 1001, 1001))
        fake, client, trail = await connect(tmp_path, None, Access(bindings, "refuse"))
        assert fake.accepted == 1
        assert STARTUP in fake.received
        assert not any(b"C28000" in w for w in client.written)
        trail.close()

    asyncio.run(scenario())
    recorded = events(tmp_path / "trail.db")
    start = recorded[0][1]
    assert start["identity"]["email"] == "alice@example.test"
    assert start["identity"]["binding"] == {
        "kind": "cgroup",
        "target": "/witness-agents/run-1",
        "expires": None,
    }
    assert "refused" not in start
    command = next(p for t, p in recorded if t == "command")
    assert command["identity"] == start["identity"]


def test_an_identity_the_backend_does_not_admit_gets_42501(tmp_path: Path) -> None:
    async def scenario() -> None:
        bindings = Bindings(clock=lambda: 1000.0)
        bindings.bind_cgroup("/witness-agents/run-1", 9, ALICE, None, Caller(1, 1001, 1001))
        only_ops = Backend("orders", "127.0.0.1", 1, allow_groups=("ops",))
        fake, client, trail = await connect(tmp_path, only_ops, Access(bindings, "refuse"))
        sent = b"".join(client.written)
        assert b"C42501\x00" in sent and b"may not connect to backend orders" in sent
        assert fake.accepted == 0
        trail.close()

    asyncio.run(scenario())
    start = events(tmp_path / "trail.db")[0][1]
    assert start["identity"]["subject"] == "alice-sub"
    assert start["refused"]["code"] == "42501"


def test_an_owner_in_doubt_is_refused_even_where_unbound_connections_are_allowed(
    tmp_path: Path,
) -> None:
    seen = "eBPF record: pid 42, uid 1001, cookie 7; live socket: ESTABLISHED, uid 1003, cookie 9"
    doubtful = Owner(source="ebpf", doubt="its eBPF owner record was taken for another socket",
                     detail=seen)  # fmt: skip

    async def scenario() -> None:
        fake, client, trail = await connect(tmp_path, None, Access(Bindings(), "allow"), doubtful)
        sent = b"".join(client.written)
        assert b"C08004\x00" in sent and b"taken for another socket" in sent
        assert fake.accepted == 0
        trail.close()

    asyncio.run(scenario())
    start = events(tmp_path / "trail.db")[0][1]
    assert start["refused"]["code"] == "08004"
    assert start["owner"]["doubt"] == doubtful.doubt
    assert start["owner"]["detail"] == seen
    assert start["owner"]["uid"] is None and start["identity"] is None


def test_an_identity_over_its_limit_gets_53300_while_another_is_admitted(tmp_path: Path) -> None:
    bob = Identity("https://idp.test", "bob-sub", "bob@example.test")
    owners = {
        40001: AGENT,
        40002: AGENT,
        40003: Owner(uid=1002, pid=43, cgroup="/witness-agents/run-2", cgroup_id=10),
    }

    async def scenario() -> list[bytes]:
        loop = asyncio.get_running_loop()
        fake = Backend_()
        port = await fake.start()
        trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
        bindings = Bindings(clock=lambda: 1000.0)
        bindings.bind_cgroup("/witness-agents/run-1", 9, ALICE, None, Caller(1, 1001, 1001))
        bindings.bind_cgroup("/witness-agents/run-2", 10, bob, None, Caller(1, 1002, 1002))
        relay = Relay(
            Recorder(trail, loop),
            Backend("orders", "127.0.0.1", port, max_connections_per_identity=1),
            Capture(),
            1 << 20,
            lambda client, local: owners[client[1]],
            access=Access(bindings, "refuse"),
            limits=Limits(),
        )
        clients = []
        for client_port in owners:
            session = relay.session()
            client = FakeTransport({"peername": ("127.0.0.1", client_port)})
            session.connection_made(client)
            session.data_received(STARTUP + QUERY)
            clients.append(client)
            await asyncio.sleep(0.1)
        assert fake.accepted == 2  # alice's first, and bob's
        trail.close()
        return [b"".join(c.written) for c in clients]

    first, second, third = asyncio.run(scenario())
    assert b"C53300\x00" not in first and b"C53300\x00" not in third
    assert b"C53300\x00" in second and b"alice@example.test has 1 connections open" in second
    starts = [p for t, p in events(tmp_path / "trail.db") if t == "session_start"]
    refused = [s for s in starts if "refused" in s]
    assert len(refused) == 1 and refused[0]["refused"]["code"] == "53300"
    assert refused[0]["identity"]["subject"] == "alice-sub"
