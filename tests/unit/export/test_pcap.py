"""pcap of sessions recorded with [capture] wire, read back with dpkt: the handshake, the
segments and their numbers, the FINs; over IPv4 and IPv6; from any event on."""

from __future__ import annotations

import io
from pathlib import Path

import dpkt
import pgwire as pg
import pytest
from exporting import messages
from trailwriter import writer

from appliance.export import pcap
from appliance.export.select import Selection
from appliance.policy.redact import Redactor
from appliance.protocols.postgres.wire import PostgresTap

TALK = [
    ("client", pg.startup(user="app", database="shop")),
    ("server", b"".join(pg.WELCOME)),
    ("client", pg.query("select repeat('z', 4000)")),
    ("server", pg.row_description("repeat") + pg.data_row(b"z" * 4000)),
    ("server", pg.command_complete("SELECT 1") + pg.ready_for_query()),
    ("client", pg.terminate()),
]


def recorded(tmp_path: Path, client: str, destination: str) -> Path:
    """A trail with one session recorded through the tap, as the relay records it."""
    settings, t, at = writer(tmp_path)
    start = {"client": client, "destination": destination, "backend": {"name": "orders"}}
    at(0, "session_start", "s1", start)
    tap = PostgresTap(Redactor(), 1 << 20, 1 << 20)
    for i, (side, data) in enumerate(TALK):
        (tap.client if side == "client" else tap.server)(data)
        for payload in tap.take():
            at(1 + i, "wire", "s1", payload)
    at(9, "session_end", "s1", {"reason": "client closed", "wire": dict(tap.sizes)})
    t.close()
    return settings.path


def packets(data: bytes) -> list[tuple[float, dpkt.tcp.TCP]]:
    out = []
    for ts, frame in dpkt.pcap.Reader(io.BytesIO(data)):
        ip = dpkt.ethernet.Ethernet(frame).data
        out.append((ts, ip.data))
    return out


@pytest.mark.parametrize(
    ("client", "destination", "mss"),
    [("10.0.9.1:40001", "10.0.0.5:5432", 1460), ("fd00::7:40001", "fd00::5:5432", 1440)],
    ids=["IPv4", "IPv6"],
)
def test_one_tcp_connection_whole(tmp_path: Path, client: str, destination: str, mss: int) -> None:
    trail = recorded(tmp_path, client, destination)
    data = pcap.HEADER + b"".join(messages(trail, "pcap"))
    found = packets(data)
    flags = [tcp.flags for _, tcp in found]
    syn, ack, fin = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
    assert flags[:3] == [syn, syn | ack, ack]
    assert flags[-3:] == [fin | ack, fin | ack, ack]
    assert found[0][1].opts == b"\x02\x04" + mss.to_bytes(2, "big")
    assert {tcp.dport for _, tcp in found if tcp.sport == 40001} == {5432}
    streams = {40001: b"", 5432: b""}
    isn = {tcp.sport: tcp.seq for _, tcp in found[:2]}
    for _, tcp in found[3:-3]:
        assert len(tcp.data) <= mss
        if tcp.data:
            assert tcp.seq == (isn[tcp.sport] + 1 + len(streams[tcp.sport])) % 2**32
            streams[tcp.sport] += tcp.data
        other = 5432 if tcp.sport == 40001 else 40001
        assert tcp.ack == (isn[other] + 1 + len(streams[other])) % 2**32
    assert streams[40001] == pg.query("select repeat('z', 4000)") + pg.terminate()
    assert pg.data_row(b"z" * 4000) in streams[5432]
    assert pg.backend_key_data(4242, 99) not in streams[5432]  # never recorded
    assert sum(len(tcp.data) > 0 for _, tcp in found) >= 4000 // mss + 1


def test_a_selection_from_the_middle_needs_no_memory(tmp_path: Path) -> None:
    trail = recorded(tmp_path, "10.0.9.1:40001", "10.0.0.5:5432")
    whole = packets(pcap.HEADER + b"".join(messages(trail, "pcap")))
    late = packets(
        pcap.HEADER + b"".join(messages(trail, "pcap", Selection(since=1_700_000_004_000_000)))
    )
    assert len(late) < len(whole)
    assert [bytes(tcp) for _, tcp in late] == [bytes(tcp) for _, tcp in whole[-len(late) :]]


def test_only_recorded_sessions(tmp_path: Path) -> None:
    settings, t, at = writer(tmp_path)
    at(0, "session_start", "s1", {"client": "10.0.9.1:1", "destination": "10.0.0.5:5432"})
    at(1, "command", "s1", {"n": 1, "kind": "query", "text": "select 1"})
    at(2, "wire", "s1", {"withheld": "masks apply to this session"})
    at(3, "session_end", "s1", {"reason": "client closed", "wire": {"client": 0, "server": 0}})
    t.close()
    assert messages(settings.path, "pcap") == []
