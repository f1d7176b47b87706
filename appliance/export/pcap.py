"""pcap: sessions' recorded wire messages as synthetic TCP streams, sans-io, built with dpkt.

Each session whose raw messages were recorded (``[capture] wire``) becomes one TCP
connection from the client's address and port to the backend's real address and port: a
three-way handshake before its first recorded bytes, its messages in segments of at most
one MSS (1,460 bytes over IPv4, 1,440 over IPv6), each answered by an ACK, with sequence
and acknowledgement numbers that count exactly the recorded bytes each way, and a FIN each
way at its end. Every packet is derived from its own trail event (its ``offset`` and
``peer``): the streams need no memory of what came before, so an export can start or
resume anywhere. Messages the recording leaves out (the login, secrets, what comes after
it stopped) are simply not in the stream, which stays whole.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
from typing import Any

import dpkt

from appliance.export import fields
from appliance.export.record import Meta, Record

HEADER = bytes(dpkt.pcap.FileHdr(snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB))
MSS = {4: 1460, 6: 1440}
_MAC = {"client": b"\x02\x00\x00\x00\x00\x01", "server": b"\x02\x00\x00\x00\x00\x02"}
_WINDOW = 65535
_MOD = 1 << 32


class _Stream:
    """One session's connection: its endpoints and initial sequence numbers."""

    def __init__(self, record: Record) -> None:
        client = fields.endpoint(record.start.get("client"))
        server = fields.destination(record)
        if client is None or server is None:
            raise LookupError(record.session)
        self.ends = {"client": client, "server": server}
        self.version = ipaddress.ip_address(client[0]).version
        if ipaddress.ip_address(server[0]).version != self.version:
            raise LookupError(record.session)
        self.isn = {side: _isn(record.session, side) for side in ("client", "server")}
        self.ts = record.ts

    def packet(self, side: str, seq: int, ack: int, flags: int, data: bytes = b"") -> bytes:
        """A pcap record: one Ethernet frame from ``side``, at the event's time."""
        other = "server" if side == "client" else "client"
        src, dst = self.ends[side], self.ends[other]
        opts = b""
        if flags & dpkt.tcp.TH_SYN:
            opts = b"\x02\x04" + MSS[self.version].to_bytes(2, "big")
        tcp = dpkt.tcp.TCP(
            sport=src[1],
            dport=dst[1],
            seq=(self.isn[side] + seq) % _MOD,
            ack=(self.isn[other] + ack) % _MOD if flags & dpkt.tcp.TH_ACK else 0,
            flags=flags,
            win=_WINDOW,
            off=5 + len(opts) // 4,
            opts=opts,
            data=data,
        )
        if self.version == 4:
            ip: dpkt.Packet = dpkt.ip.IP(
                src=socket.inet_pton(socket.AF_INET, src[0]),
                dst=socket.inet_pton(socket.AF_INET, dst[0]),
                p=dpkt.ip.IP_PROTO_TCP,
                ttl=64,
                data=tcp,
            )
            kind = dpkt.ethernet.ETH_TYPE_IP
        else:
            ip = dpkt.ip6.IP6(
                src=socket.inet_pton(socket.AF_INET6, src[0]),
                dst=socket.inet_pton(socket.AF_INET6, dst[0]),
                nxt=dpkt.ip.IP_PROTO_TCP,
                hlim=64,
                plen=len(tcp),
                data=tcp,
            )
            kind = dpkt.ethernet.ETH_TYPE_IP6
        frame = bytes(dpkt.ethernet.Ethernet(src=_MAC[side], dst=_MAC[other], type=kind, data=ip))
        header = dpkt.pcap.PktHdr(
            tv_sec=self.ts // 1_000_000,
            tv_usec=self.ts % 1_000_000,
            caplen=len(frame),
            len=len(frame),
        )
        return bytes(header) + frame

    def handshake(self) -> list[bytes]:
        syn, ack = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK
        return [
            self.packet("client", 0, 0, syn),
            self.packet("server", 0, 1, syn | ack),
            self.packet("client", 1, 1, ack),
        ]


def records(record: Record, meta: Meta) -> list[bytes]:
    """The pcap records a trail event makes: segments for recorded messages (after the
    handshake, for a session's first), FINs for the end of a recorded session."""
    p = record.payload
    if record.type == "wire" and isinstance(p.get("data"), str):
        return _segments(record, p)
    if record.type == "session_end" and isinstance(p.get("wire"), dict):
        return _close(record, p["wire"])
    return []


def _segments(record: Record, p: dict[str, Any]) -> list[bytes]:
    try:
        stream = _Stream(record)
        data = base64.b64decode(p["data"], validate=True)
        side, offset, peer = str(p["from"]), int(p["offset"]), int(p["peer"])
    except (LookupError, ValueError, TypeError):
        return []
    if side not in ("client", "server"):
        return []
    other = "server" if side == "client" else "client"
    out = stream.handshake() if offset == 0 and peer == 0 else []
    mss = MSS[stream.version]
    ack, push = dpkt.tcp.TH_ACK, dpkt.tcp.TH_PUSH
    for at in range(0, len(data), mss):
        piece = data[at : at + mss]
        last = at + mss >= len(data)
        flags = ack | push if last else ack
        out.append(stream.packet(side, 1 + offset + at, 1 + peer, flags, piece))
    out.append(stream.packet(other, 1 + peer, 1 + offset + len(data), ack))
    return out


def _close(record: Record, sizes: dict[str, Any]) -> list[bytes]:
    client, server = sizes.get("client"), sizes.get("server")
    if not isinstance(client, int) or not isinstance(server, int) or not client + server:
        return []
    try:
        stream = _Stream(record)
    except LookupError:
        return []
    fin, ack = dpkt.tcp.TH_FIN, dpkt.tcp.TH_ACK
    return [
        stream.packet("client", 1 + client, 1 + server, fin | ack),
        stream.packet("server", 1 + server, 2 + client, fin | ack),
        stream.packet("client", 2 + client, 2 + server, ack),
    ]


def _isn(session: str | None, side: str) -> int:
    """A session's initial sequence number for one side: fixed by its id, so every export
    of it numbers its bytes alike."""
    digest = hashlib.sha256(f"{session}\0{side}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
