"""The tap that records a PostgreSQL session's raw messages: what it keeps, what it never
keeps, where it stops for good; fed whole, then byte by byte."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pgwire as pg
import pytest

from appliance.policy.redact import Redactor
from appliance.protocols.postgres.wire import PostgresTap

LOGIN = (
    pg.authentication(10, b"SCRAM-SHA-256\0\0"),
    pg.authentication(11, b"r=nonce,s=c2FsdA==,i=4096"),
    pg.authentication(12, b"v=proof"),
    *pg.WELCOME,
)
TALK = [
    ("client", pg.ssl_request()),
    ("client", pg.startup(user="app", database="shop")),
    ("server", pg.auth_sasl("SCRAM-SHA-256")),
    ("client", pg.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=clientnonce")),
    ("server", LOGIN[1]),
    ("client", pg.sasl_response(b"c=biws,r=nonce,p=clientproof")),
    ("server", b"".join(LOGIN[2:])),
    ("client", pg.query("select 41 + 1")),
    ("server", pg.row_description("?column?") + pg.data_row(b"42")),
    ("server", pg.command_complete("SELECT 1") + pg.ready_for_query()),
    ("client", pg.parse("", "select $1::text") + pg.bind("", "", [b"x"]) + pg.execute()),
    ("client", pg.sync()),
    ("server", pg.parse_complete() + pg.bind_complete() + pg.data_row(b"x")),
    ("server", pg.command_complete("SELECT 1") + pg.ready_for_query()),
]


def chunks(talk: list[tuple[str, bytes]], split: bool) -> Iterator[tuple[str, bytes]]:
    for side, data in talk:
        if split:
            for i in range(len(data)):
                yield side, data[i : i + 1]
        else:
            yield side, data


def tap_all(
    talk: list[tuple[str, bytes]], split: bool = False, limit: int = 1 << 20
) -> PostgresTap:
    tap = PostgresTap(Redactor(), limit, 1 << 20)
    for side, data in chunks(talk, split):
        (tap.client if side == "client" else tap.server)(data)
    return tap


def streams(records: list[dict[str, Any]]) -> dict[str, bytes]:
    """Each way's recorded bytes, checking that every record starts where the last ended."""
    out = {"client": b"", "server": b""}
    for record in records:
        if "data" not in record:
            continue
        side = record["from"]
        other = "server" if side == "client" else "client"
        assert record["offset"] == len(out[side])
        assert record["peer"] == len(out[other])
        out[side] += base64.b64decode(record["data"])
    return out


def kinds(stream: bytes) -> str:
    found, pos = [], 0
    while pos < len(stream):
        found.append(chr(stream[pos]))
        pos += 1 + int.from_bytes(stream[pos + 1 : pos + 5], "big")
    assert pos == len(stream)
    return "".join(found)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
def test_whole_messages_both_ways_but_the_login_secrets(split: bool) -> None:
    tap = tap_all(TALK, split)
    records = tap.take()
    got = streams(records)
    assert kinds(got["client"]) == "QPBES"
    assert kinds(got["server"]) == "SSZTDCZ12DCZ"  # no R (authentication), no K (cancel key)
    assert pg.query("select 41 + 1") in got["client"]
    assert b"clientproof" not in got["client"] and b"nonce" not in got["server"]
    assert tap.sizes == {"client": len(got["client"]), "server": len(got["server"])}
    assert all("withheld" not in r for r in records)
    assert tap.take() == []


def test_a_secret_stops_the_recording_before_it() -> None:
    talk = [
        *TALK[:2],
        ("client", pg.query("select 1")),
        ("client", pg.query("alter role app password 'hunter2'")),
        ("server", pg.error_response('syntax error at or near "hunter2"')),
        ("client", pg.query("select 2")),
    ]
    tap = tap_all(talk)
    records = tap.take()
    assert kinds(streams(records)["client"]) == "Q"
    assert records[-1] == {
        "withheld": "a command held a secret (its record is redacted; its raw bytes are not kept)"
    }
    assert b"hunter2" not in repr(records).encode()
    assert "select 2" not in repr(records)


@pytest.mark.parametrize(
    ("message", "why"),
    [
        (pg.parse("s", "select pgp_sym_encrypt($1, $2)"), "a command held a secret"),
        (pg.function_call(1234, [b"key"]), "a FunctionCall"),
        (pg.message(b"Q", b"select '\xff'\0"), "not ASCII while the client encoding is UTF8"),
    ],
    ids=["parse of a secret function", "fast path", "not UTF-8"],
)
def test_what_else_stops_it(message: bytes, why: str) -> None:
    records = tap_all([*TALK[:2], ("client", message)]).take()
    assert "data" not in records[0]
    assert why in records[0]["withheld"]


def test_text_beyond_ascii_only_while_the_server_says_utf8() -> None:
    hello = pg.query("select 'héllo'")
    assert kinds(streams(tap_all([*TALK, ("client", hello)]).take())["client"]).endswith("Q")
    latin = [*TALK, ("server", pg.parameter_status("client_encoding", "LATIN1"))]
    records = tap_all(
        [*latin, ("client", pg.message(b"Q", "select 'héllo'".encode("latin-1") + b"\0"))]
    ).take()
    assert "client encoding is LATIN1" in records[-1]["withheld"]


def test_the_limit_ends_it() -> None:
    big = pg.query("select '" + "x" * 2000 + "'")
    records = tap_all(
        [*TALK[:2], ("client", pg.query("select 1")), ("client", big)], limit=1024
    ).take()
    assert kinds(streams(records)["client"]) == "Q"
    assert (
        records[-1]["withheld"]
        == "the session's raw messages passed capture.wire_bytes (1024 bytes)"
    )


def test_withheld_by_the_session_and_a_stream_that_is_not_postgresql() -> None:
    tap = tap_all(TALK[:2])
    tap.withhold("masks apply to this session: its raw messages are not recorded")
    tap.client(pg.query("select ssn from people"))
    assert tap.take() == [
        {"withheld": "masks apply to this session: its raw messages are not recorded"}
    ]
    broken = tap_all([*TALK[:2], ("client", b"Q\x00\x00\x00\x01")]).take()
    assert broken[-1]["withheld"].startswith("the client's bytes are not PostgreSQL messages:")
