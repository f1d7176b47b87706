"""Fuzzing the PostgreSQL parser: nothing but ProtocolError may escape, whatever the bytes."""

from __future__ import annotations

import struct

import pgwire as pg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import Event

Conversation = list[tuple[str, bytes]]

LOGIN: Conversation = [
    ("client", pg.ssl_request()),
    ("client", pg.startup(user="alice", database="shop")),
    ("server", pg.auth_sasl("SCRAM-SHA-256")),
    ("client", pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=nonce")),
    ("server", pg.authentication(12, b"v=sig")),
    ("server", b"".join(pg.WELCOME)),
]

CONVERSATIONS: list[Conversation] = [
    [
        *LOGIN,
        ("client", pg.query("select id, name from users; update t set x = 1")),
        (
            "server",
            pg.row_description("id", "name")
            + pg.data_row(b"1", None)
            + pg.command_complete("SELECT 1")
            + pg.notice_response("hm")
            + pg.command_complete("UPDATE 3")
            + pg.ready_for_query("I"),
        ),
        ("client", pg.terminate()),
    ],
    [
        *LOGIN,
        (
            "client",
            pg.parse("s1", "insert into t values ($1, $2)", [23, 2950])
            + pg.describe("S", "s1")
            + pg.bind("", "s1", [struct.pack("!i", 5), b"\0" * 16], formats=[1])
            + pg.execute()
            + pg.bind("p", "s1", [b"6", None])
            + pg.execute("p", 1)
            + pg.close("P", "p")
            + pg.sync(),
        ),
        (
            "server",
            pg.parse_complete()
            + pg.parameter_description(23, 2950)
            + pg.no_data()
            + pg.bind_complete()
            + pg.command_complete("INSERT 0 1")
            + pg.bind_complete()
            + pg.error_response("duplicate key", "23505")
            + pg.ready_for_query("I"),
        ),
        ("client", pg.function_call(1598, [b"\0\0\0\1"], [1]) + pg.query("")),
        (
            "server",
            pg.function_call_response(b"x") + pg.ready_for_query() + pg.empty_query_response(),
        ),
        ("server", pg.ready_for_query()),
    ],
    [
        *LOGIN,
        ("client", pg.query("copy t from stdin")),
        ("server", pg.copy_in_response(2)),
        ("client", pg.copy_data(b"1\tx\n" * 40) + pg.copy_done()),
        ("server", pg.command_complete("COPY 40") + pg.ready_for_query()),
        ("client", pg.parse("", "copy t to stdout") + pg.bind("", "") + pg.execute() + pg.sync()),
        (
            "server",
            pg.parse_complete()
            + pg.bind_complete()
            + pg.copy_out_response(2)
            + pg.copy_data(b"y" * 300)
            + pg.copy_done()
            + pg.command_complete("COPY 1")
            + pg.ready_for_query(),
        ),
    ],
    [("client", pg.cancel_request(4242, 99))],
    [
        *LOGIN,
        (
            "client",
            pg.query("prepare s1 as select 'ソ'; execute s1; deallocate all")
            + pg.query("set client_encoding to 'SJIS'")
            + pg.message(b"Q", "select 'ソ'; prepare s2 as select 1".encode("cp932") + b"\0")
            + pg.parse("s3", "do $$ begin end $$")
            + pg.bind("p", "s3", [b"\x83\x5c"])
            + pg.execute("p")
            + pg.sync(),
        ),
        (
            "server",
            pg.command_complete("PREPARE")
            + pg.row_description("x")
            + pg.data_row("ソ".encode())
            + pg.command_complete("SELECT 1")
            + pg.command_complete("DEALLOCATE ALL")
            + pg.ready_for_query()
            + pg.command_complete("SET")
            + pg.parameter_status("client_encoding", "SJIS")
            + pg.ready_for_query()
            + pg.row_description("x")
            + pg.data_row("ソ".encode("cp932"))
            + pg.command_complete("SELECT 1")
            + pg.command_complete("PREPARE")
            + pg.ready_for_query()
            + pg.parse_complete()
            + pg.bind_complete()
            + pg.command_complete("DO")
            + pg.ready_for_query(),
        ),
    ],
]


def _feed(conn: PostgresConnection, side: str, chunks: list[bytes]) -> list[Event]:
    receive = conn.receive_client if side == "client" else conn.receive_server
    events: list[Event] = []
    for chunk in chunks:
        events += receive(chunk)
    return events


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _survives(conn: PostgresConnection, steps: list[tuple[str, list[bytes]]]) -> None:
    """Feed everything; a ProtocolError ends the session, and nothing else may escape."""
    try:
        for side, chunks in steps:
            _feed(conn, side, chunks)
    except ProtocolError as exc:
        assert exc.side in ("client", "server")
        for receive in (conn.receive_client, conn.receive_server):
            try:
                receive(b"x")
            except ProtocolError:
                pass
            else:
                raise AssertionError("a failed session accepted more bytes") from exc
    conn.close()


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
connections = st.builds(
    PostgresConnection,
    capture_rows=st.sampled_from([0, 1, 100]),
    capture_bytes=st.sampled_from([8, 65536]),
    max_message=st.sampled_from([64, 1 << 20]),
)


@FUZZ
@given(
    data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8), conn=connections
)
def test_random_client_bytes(data: bytes, cuts: list[int], conn: PostgresConnection) -> None:
    _survives(conn, [("client", _split(data, cuts))])


@FUZZ
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    conn=connections,
    pending=st.sampled_from([b"", pg.query("q"), pg.parse("", "x") + pg.describe("S") + pg.sync()]),
)
def test_random_server_bytes(
    data: bytes, cuts: list[int], conn: PostgresConnection, pending: bytes
) -> None:
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    conn.receive_client(pending)
    _survives(conn, [("server", _split(data, cuts))])


@st.composite
def mutated(draw: st.DrawFn) -> list[tuple[str, list[bytes]]]:
    conversation = draw(st.sampled_from(CONVERSATIONS))
    steps = []
    for side, data in conversation:
        buf = bytearray(data)
        for _ in range(draw(st.integers(0, 2))):
            if not buf:
                break
            at = draw(st.integers(0, len(buf) - 1))
            action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
            if action == "flip":
                buf[at] ^= draw(st.integers(1, 255))
            elif action == "insert":
                buf[at:at] = draw(st.binary(min_size=1, max_size=6))
            elif action == "delete":
                del buf[at : at + draw(st.integers(1, 6))]
            else:
                del buf[at:]
        cuts = draw(st.lists(st.integers(0, len(buf)), max_size=6))
        steps.append((side, _split(bytes(buf), cuts)))
    return steps


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=mutated(), conn=connections)
def test_mutated_conversations(
    steps: list[tuple[str, list[bytes]]], conn: PostgresConnection
) -> None:
    _survives(conn, steps)


@FUZZ
@given(
    conversation=st.sampled_from(CONVERSATIONS),
    cuts=st.lists(st.lists(st.integers(0, 2000), max_size=10), min_size=12, max_size=12),
    capture=st.sampled_from([0, 1, 100]),
)
def test_any_chunking_gives_the_same_events(
    conversation: Conversation, cuts: list[list[int]], capture: int
) -> None:
    def events(split: bool) -> list[list[Event]]:
        conn = PostgresConnection(capture_rows=capture, clock=lambda: 0.0)
        return [
            _feed(conn, side, _split(data, cuts[i]) if split else [data])
            for i, (side, data) in enumerate(conversation)
        ] + [conn.close()]

    assert events(split=True) == events(split=False)
