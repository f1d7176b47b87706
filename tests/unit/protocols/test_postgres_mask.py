"""Masking on the wire: DataRows and COPY rows rebuilt with the masked values and correct
lengths, the rest of the stream as it came and in order. Every test feeds the same bytes
whole, byte by byte and split inside messages, and checks the bytes the client is handed."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pgwire as pg
import pytest
from playbook import CHUNKINGS, Chunker

from appliance.policy.masking import Column, SessionMasks, Snapshot, Table
from appliance.policy.maskrules import MaskRule
from appliance.protocols.postgres.connection import PostgresConnection

PEOPLE = 16400
SNAPSHOT = Snapshot(
    tables={
        PEOPLE: Table(
            "public",
            "people",
            "r",
            {1: Column("id", "int4", "int4"), 2: Column("ssn", "text", "text")},
        )
    }
)
RULES = (MaskRule("ssn", tables=("people",), columns=("ssn",)),)
LOGIN_IN = [pg.startup(user="app", database="app")]
LOGIN_OUT = [pg.auth_ok(), pg.backend_key_data(7, 8), pg.ready_for_query("I")]


def fields(*columns: tuple[str, int, int, int, int]) -> bytes:
    """A RowDescription: (name, table OID, column number, type OID, format) per field."""
    body = struct.pack("!h", len(columns))
    for name, table, attnum, oid, fmt in columns:
        body += pg.cstr(name) + struct.pack("!IhIhih", table, attnum, oid, -1, -1, fmt)
    return pg.message(b"T", body)


ID = ("id", PEOPLE, 1, 23, 0)
SSN = ("ssn", PEOPLE, 2, 25, 0)


class Ends:
    """One masked connection as the relay drives it: what the client is handed."""

    def __init__(self, chunker: Chunker, snapshot: Snapshot = SNAPSHOT) -> None:
        self.conn = PostgresConnection()
        self.chunker = chunker
        self.to_client = b""
        self.stale = 0
        self.masks = SessionMasks(RULES, lambda: snapshot, b"k" * 32, self._stale)
        for chunk in chunker(LOGIN_IN):
            self.conn.receive_client(chunk)
            self.conn.client_payload(chunk)
        self.conn.mask(self.masks)
        self.server(LOGIN_OUT)
        self.to_client = b""

    def _stale(self) -> None:
        self.stale += 1

    def client(self, messages: Sequence[bytes]) -> None:
        for chunk in self.chunker(messages):
            self.conn.receive_client(chunk)
            self.conn.client_payload(chunk)

    def server(self, messages: Sequence[bytes]) -> None:
        for chunk in self.chunker(messages):
            assert self.conn.rewriting  # a masked session's bytes are parsed first
            self.conn.receive_server(chunk)
            self.to_client += self.conn.server_payload(chunk)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_a_simple_query_s_rows_are_rebuilt(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client([pg.query("select id, ssn as x from people")])
    ends.server(
        [
            fields(ID, ("x", PEOPLE, 2, 25, 0)),
            pg.data_row(b"1", b"123-45-6789"),
            pg.data_row(b"2", None),
            pg.notice_response("between rows"),
            pg.data_row(b"3", b"987-65-4321-and-more"),
            pg.command_complete("SELECT 3"),
            pg.ready_for_query("I"),
        ]
    )
    assert ends.to_client == b"".join(
        [
            fields(ID, ("x", PEOPLE, 2, 25, 0)),
            pg.data_row(b"1", b"[masked:ssn]"),
            pg.data_row(b"2", None),
            pg.notice_response("between rows"),
            pg.data_row(b"3", b"[masked:ssn]"),
            pg.command_complete("SELECT 3"),
            pg.ready_for_query("I"),
        ]
    )


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_binary_text_columns_are_masked_as_bytes(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client(
        [
            pg.parse("", "select id, ssn from people"),
            pg.bind("", "", result_formats=[1]),
            pg.describe("P"),
            pg.execute(),
            pg.sync(),
        ]
    )
    out = [
        pg.parse_complete(),
        pg.bind_complete(),
        fields(("id", PEOPLE, 1, 23, 1), ("ssn", PEOPLE, 2, 25, 1)),
        pg.data_row(struct.pack("!i", 1), b"123-45-6789"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query("I"),
    ]
    ends.server(out)
    out[3] = pg.data_row(struct.pack("!i", 1), b"[masked:ssn]")
    assert ends.to_client == b"".join(out)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_rows_whose_shape_no_describe_told_are_masked_whole(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client(
        [pg.parse("", "select id, ssn from people"), pg.bind("", ""), pg.execute(), pg.sync()]
    )
    out = [
        pg.parse_complete(),
        pg.bind_complete(),
        pg.data_row(b"1", b"123-45-6789"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query("I"),
    ]
    ends.server(out)
    out[2] = pg.data_row(b"[masked]", b"[masked]")
    assert ends.to_client == b"".join(out)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_a_statement_described_once_masks_its_later_runs(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client([pg.parse("s1", "select id, ssn from people"), pg.describe("S", "s1"), pg.sync()])
    ends.server(
        [
            pg.parse_complete(),
            pg.parameter_description(),
            fields(ID, SSN),
            pg.ready_for_query("I"),
        ]
    )
    ends.to_client = b""
    ends.client([pg.bind("", "s1"), pg.execute(), pg.sync()])
    out = [
        pg.bind_complete(),
        pg.data_row(b"1", b"123-45-6789"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query("I"),
    ]
    ends.server(out)
    out[1] = pg.data_row(b"1", b"[masked:ssn]")
    assert ends.to_client == b"".join(out)


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_a_table_the_snapshot_does_not_know_is_masked_and_read_again(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client([pg.query("select * from newer")])
    out = [
        fields(("a", 99999, 1, 25, 0), ("n", 0, 0, 23, 0)),
        pg.data_row(b"secret", b"7"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query("I"),
    ]
    ends.server(out)
    out[1] = pg.data_row(b"[masked]", b"7")  # a computed column is not a table's
    assert ends.to_client == b"".join(out)
    assert ends.stale >= 1


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_copy_out_rows_are_masked(chunking: str) -> None:
    ends = Ends(CHUNKINGS[chunking])
    ends.client([pg.query("copy people to stdout")])
    out = [
        pg.copy_out_response(2),
        pg.copy_data(b"1\t123-45-6789\n"),
        pg.copy_data(b"2\t\\N\n"),
        pg.copy_data(b"3\ta\\tb\n"),
        pg.copy_done(),
        pg.command_complete("COPY 3"),
        pg.ready_for_query("I"),
    ]
    ends.server(out)
    out[1] = pg.copy_data(b"1\t[masked:ssn]\n")
    out[3] = pg.copy_data(b"3\t[masked:ssn]\n")
    assert ends.to_client == b"".join(out)


def test_an_unmasked_session_stays_on_the_fast_path() -> None:
    conn = PostgresConnection()
    conn.receive_client(LOGIN_IN[0])
    conn.client_payload(LOGIN_IN[0])
    conn.receive_server(b"".join(LOGIN_OUT))
    assert not conn.rewriting


@pytest.mark.parametrize("chunking", CHUNKINGS)
def test_a_server_error_goes_without_its_detail(chunking: str) -> None:
    """A constraint's DETAIL quotes the failing row: in a masked session it is withheld,
    and the rest of the error (and of the stream) is as the server sent it."""
    ends = Ends(CHUNKINGS[chunking])
    ends.client([pg.query("update people set id = null where id = 2")])
    fields = (
        b"SERROR\0C23502\0Mnull value in column\0DFailing row contains (null, 123-45-6789).\0\0"
    )
    error = pg.message(b"E", fields)
    ends.server([error, pg.ready_for_query("I")])
    assert b"123-45-6789" not in ends.to_client
    assert b"withheld" in ends.to_client and b"null value in column" in ends.to_client
    assert ends.to_client.endswith(pg.ready_for_query("I"))
