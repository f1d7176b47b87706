"""Malformed input: every fault is a ProtocolError that names the side and says what was wrong."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pgwire as pg
import pytest
from playbook import bytewise

from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import CommandFinished


def _ready(capture_rows: int = 0, max_message: int = 1 << 26) -> PostgresConnection:
    conn = PostgresConnection(capture_rows=capture_rows, max_message=max_message)
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    return conn


def _started() -> PostgresConnection:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    return conn


def _fails(
    side: str, data: bytes, match: str, make: Callable[[], PostgresConnection] = _ready
) -> None:
    """The fault is found whether the bytes come whole or one at a time."""
    for chunks in ([data], list(bytewise([data]))):
        conn = make()
        receive = conn.receive_client if side == "client" else conn.receive_server
        with pytest.raises(ProtocolError, match=match) as caught:
            for chunk in chunks:
                receive(chunk)
        assert caught.value.side == side


def _untyped(body: bytes) -> bytes:
    return struct.pack("!I", len(body) + 4) + body


@pytest.mark.parametrize("side", ["client", "server"])
@pytest.mark.parametrize("length", [0, 3])
def test_length_below_four(side: str, length: int) -> None:
    kind = b"Q" if side == "client" else b"C"
    _fails(side, kind + struct.pack("!I", length), f"declares length {length}")


@pytest.mark.parametrize(
    ("side", "data"),
    [("client", pg.query("x" * 2000)), ("server", pg.error_response("x" * 2000))],
)
def test_oversize_message(side: str, data: bytes) -> None:
    conn = _ready(max_message=1000)
    receive = conn.receive_client if side == "client" else conn.receive_server
    with pytest.raises(ProtocolError, match=r"is \d+ bytes, over the 1000-byte limit"):
        receive(data[:10])  # the header alone is enough to refuse it


def test_oversize_copy_data_and_data_rows_are_fine() -> None:
    conn = _ready(max_message=1000)
    conn.receive_client(pg.query("copy t to stdout"))
    body = b"x" * 5000
    assert (
        conn.receive_server(pg.copy_out_response() + pg.copy_data(body) + pg.data_row(body)) == []
    )
    conn.receive_client(pg.copy_data(body))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pg.startup((2, 0), user="a"), r"protocol 2\.0\); expected protocol 3\.x"),
        (struct.pack("!II", 8, 1234 << 16 | 9999), "startup packet with code"),
        (
            struct.pack("!II", 7, 196608),
            r"declares length 7 \(first bytes 00000007\); expected 8 to 10000",
        ),
        (struct.pack("!I", 10001), "declares length 10001"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01", "TLS handshake"),
        (b"\x00\x00\x00\x0a\x04\xd2\x16\x2f\x00\x00", "ssl request has 2 bytes after its code"),
        (struct.pack("!IIi", 12, 80877102, 5), "CancelRequest; expected 16 to 268 bytes"),
        (_untyped(b"\0\3\0\0user\0alice\0"), "does not end with an empty name"),
        (_untyped(b"\0\3\0\0user\0alice\0\0x"), "1 unexpected bytes"),
        (_untyped(b"\0\3\0\0user\0alice"), "value of parameter 'user' has no NUL"),
    ],
)
def test_bad_startup_packets(data: bytes, match: str) -> None:
    _fails("client", data, match, PostgresConnection)


@pytest.mark.parametrize(
    ("side", "data", "match"),
    [
        ("client", pg.message(b"Z", b"I"), r"unknown message type b'Z'.* is not allowed"),
        ("client", pg.message(b"\xff", b""), r"unknown message type b'\\xff'"),
        ("server", pg.message(b"Q", b"x\0"), "unknown message type b'Q'"),
        (
            "server",
            pg.backend_key_data(1, 2),
            r"BackendKeyData \('K'\) from the server in the ready",
        ),
        ("server", pg.auth_ok(), "Authentication"),
    ],
)
def test_unexpected_message_types(side: str, data: bytes, match: str) -> None:
    _fails(side, data, match)


def test_server_may_not_speak_before_the_startup_packet() -> None:
    _fails("server", pg.auth_ok(), "in the startup phase is not allowed", PostgresConnection)


def test_messages_in_the_wrong_phase() -> None:
    _fails("server", pg.command_complete("SELECT 1"), "authentication phase", _started)


BAD_BIND = pg.message(b"B", b"\0\0" + struct.pack("!hhih", 0, 3, 1, ord("x")))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pg.message(b"Q", b"select 1"), r"Query \('Q'\).* query text has no NUL"),
        (pg.message(b"Q", b"select 1\0drop table t\0"), "13 bytes follow the NUL"),
        (
            pg.message(b"P", b"s\0select 1\0" + struct.pack("!h", 2) + b"\0\0\0\x17"),
            "2 parameter types do not fit",
        ),
        (BAD_BIND, "3 parameters do not fit in the 6 bytes left"),
        (
            pg.message(b"B", b"\0\0" + struct.pack("!hhi", 0, 2, 1) + b"x\0\0\0"),
            "2 of 2 has no length",
        ),
        (
            pg.message(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, 10) + b"abc"),
            "declares 10 bytes but 3 are left",
        ),
        (pg.message(b"B", b"\0\0" + struct.pack("!hhi", 0, 1, -2)), "has length -2"),
        (pg.message(b"B", b"\0\0" + struct.pack("!hhh", 0, 0, 0) + b"zz"), "2 unexpected bytes"),
        (pg.message(b"B", b"\0\0" + struct.pack("!h", -1)), "-1 parameter formats"),
        (pg.message(b"E", b"\0\0\0"), "expected a 4-byte row limit"),
        (pg.message(b"D", b"X\0"), "target kind b'X'"),
        (pg.message(b"C", b"S"), "name has no NUL"),
        (pg.message(b"F", b"\0\0"), "ends before the function OID"),
        (pg.message(b"F", struct.pack("!Ihh", 1, 0, 0)), "expected a 2-byte result format"),
    ],
)
def test_truncated_or_inconsistent_client_messages(data: bytes, match: str) -> None:
    _fails("client", data, match)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (pg.message(b"Z", b"X"), "transaction status b'X'"),
        (pg.message(b"Z", b""), "transaction status b''"),
        (pg.message(b"C", b"SELECT 1"), "command tag has no NUL"),
        (pg.message(b"E", b"SERROR\0"), "does not end with a zero byte"),
        (pg.message(b"E", b"SERROR"), "field 'S' has no NUL"),
        (pg.message(b"t", struct.pack("!h", 3)), "3 parameter types do not fit"),
    ],
)
def test_truncated_server_messages(data: bytes, match: str) -> None:
    def make() -> PostgresConnection:
        conn = _ready()
        conn.receive_client(pg.describe("S", "s") + pg.query("select 1"))
        return conn

    _fails("server", data, match, make)


def test_truncated_rows_are_found_when_capture_reads_them() -> None:
    def make() -> PostgresConnection:
        conn = _ready(capture_rows=5)
        conn.receive_client(pg.query("select 1"))
        return conn

    row = pg.message(b"D", struct.pack("!hi", 2, 1) + b"x\0\0\0")
    _fails("server", row, "column 2 of 2 has no length", make)


def test_truncated_authentication_answers() -> None:
    _fails("server", pg.message(b"K", b"\0\0\0\1"), "BackendKeyData.*4-byte body", _started)


def test_after_an_error_every_call_fails_and_close_still_reports() -> None:
    conn = _ready()
    conn.receive_client(pg.query("select pg_sleep(10)"))
    with pytest.raises(ProtocolError):
        conn.receive_server(pg.message(b"Z", b"?"))
    for receive in (conn.receive_client, conn.receive_server):
        with pytest.raises(ProtocolError, match=r"already failed.*transaction status") as caught:
            receive(pg.sync())
        assert caught.value.side == "server"
    [aborted] = conn.close()
    assert isinstance(aborted, CommandFinished)
    assert (aborted.n, aborted.result.status) == (1, "aborted")


def test_commands_started_by_a_failed_call_are_forgotten() -> None:
    # The relay forwards none of a chunk it could not parse, so nothing in it was sent.
    conn = _ready()
    with pytest.raises(ProtocolError):
        conn.receive_client(pg.query("select 1") + pg.message(b"Q", b"no nul"))
    assert conn.close() == []


def test_commands_finished_by_a_failed_call_are_reported_by_close() -> None:
    conn = _ready()
    conn.receive_client(pg.query("select 1") + pg.query("select 2"))
    with pytest.raises(ProtocolError):
        conn.receive_server(pg.command_complete("SELECT 1") + pg.ready_for_query() + b"?\0\0\0\4")
    finished = conn.close()
    assert [(e.n, e.result.status) for e in finished if isinstance(e, CommandFinished)] == [
        (1, "ok"),
        (2, "aborted"),
    ]
