"""Payload decoders and the relay's own messages, checked value by value."""

from __future__ import annotations

import struct
import uuid

import pgwire as pg
import pytest

from appliance.model import ErrorInfo
from appliance.protocols.postgres import decode, messages
from appliance.protocols.postgres.encodings import UTF8


@pytest.mark.parametrize(
    ("oid", "raw", "text"),
    [
        (16, b"\x01", "t"),
        (16, b"\x00", "f"),
        (17, b"\x00\xff", "\\x00ff"),
        (20, struct.pack("!q", -(2**63)), str(-(2**63))),
        (21, struct.pack("!h", -7), "-7"),
        (23, struct.pack("!i", 2**31 - 1), "2147483647"),
        (25, "žluťoučký".encode(), "žluťoučký"),
        (25, b"\xff\xfe", "\\xfffe"),
        (26, struct.pack("!I", 4_000_000_000), "4000000000"),
        (114, b'{"a": 1}', '{"a": 1}'),
        (700, struct.pack("!f", 0.1), "0.1"),
        (700, struct.pack("!f", float("inf")), "Infinity"),
        (701, struct.pack("!d", 1.5), "1.5"),
        (701, struct.pack("!d", 3.0), "3"),
        (701, struct.pack("!d", float("-inf")), "-Infinity"),
        (701, struct.pack("!d", float("nan")), "NaN"),
        (1042, b"ab  ", "ab  "),
        (1043, b"abc", "abc"),
        (1082, struct.pack("!i", 0), "2000-01-01"),
        (1082, struct.pack("!i", -1), "1999-12-31"),
        (1082, struct.pack("!i", 2**31 - 1), "infinity"),
        (1082, struct.pack("!i", 2_000_000_000), "\\x77359400"),  # beyond year 9999
        (1114, struct.pack("!q", 86_400_000_001), "2000-01-02 00:00:00.000001"),
        (1114, struct.pack("!q", -(2**63)), "-infinity"),
        (1184, struct.pack("!q", 0), "2000-01-01 00:00:00+00"),
        (2950, uuid.UUID(int=1).bytes, str(uuid.UUID(int=1))),
        (3802, b'\x01{"a": 1}', '{"a": 1}'),
        (3802, b'\x02{"a": 1}', "\\x027b2261223a20317d"),
        (1700, b"\x00\x01", "\\x0001"),  # numeric: not decoded
        (0, b"\x00\x01", "\\x0001"),  # unknown type
    ],
)
def test_binary_values(oid: int, raw: bytes, text: str) -> None:
    assert decode.render_value(raw, 1, oid, UTF8) == text


@pytest.mark.parametrize(
    ("oid", "raw"), [(16, b""), (20, b"\0"), (23, b"\0" * 8), (2950, b"\0" * 15)]
)
def test_binary_values_of_the_wrong_size_are_hex(oid: int, raw: bytes) -> None:
    assert decode.render_value(raw, 1, oid, UTF8) == "\\x" + raw.hex()


def test_text_and_unknown_formats() -> None:
    assert decode.render_value(b"42", 0, 23, UTF8) == "42"
    assert decode.render_value(b"42", 7, 23, UTF8) == "\\x3432"


def test_params_follow_format_codes() -> None:
    one = struct.pack("!i", 1)
    assert decode.render_params((), [b"a", None], (), UTF8) == (("a", None), False)
    assert decode.render_params((1,), [one, one], (23,), UTF8) == (("1", "\\x00000001"), False)
    assert decode.render_params((0, 1), [b"a", one], (0, 23), UTF8) == (("a", "1"), False)


@pytest.mark.parametrize(
    ("tag", "rows"),
    [
        ("SELECT 5", 5),
        ("INSERT 0 3", 3),
        ("UPDATE 2", 2),
        ("DELETE 0", 0),
        ("MERGE 4", 4),
        ("COPY 10", 10),
        ("MOVE 6", 6),
        ("FETCH 7", 7),
        ("CREATE TABLE", 0),
        ("BEGIN", 0),
        ("SELECT x", 0),
        ("SELECT ٣", 0),
    ],
)
def test_rows_from_command_tags(tag: str, rows: int) -> None:
    assert decode.tag_rows(tag) == rows
    assert decode.command_complete(tag.encode() + b"\0") == (tag, rows)


def test_error_fields_prefer_the_untranslated_severity() -> None:
    body = b"SFEHLER\0VERROR\0C42P01\0Mrelation does not exist\0Fparse.c\0\0"
    assert decode.error_info(body) == ErrorInfo("ERROR", "42P01", "relation does not exist")
    assert decode.error_info(b"SERROR\0\0") == ErrorInfo("ERROR", "", "")


def test_error_response_round_trips() -> None:
    data = messages.error_response("FATAL", "28000", "run `witness login` first\0!")
    assert data[:1] == b"E"
    assert int.from_bytes(data[1:5], "big") == len(data) - 1
    assert decode.error_info(data[5:]) == ErrorInfo("FATAL", "28000", "run `witness login` first!")


def test_ready_for_query() -> None:
    assert messages.ready_for_query() == pg.ready_for_query("I")
    assert messages.ready_for_query("T") == pg.ready_for_query("T")
    with pytest.raises(ValueError, match="transaction status"):
        messages.ready_for_query("X")
    assert messages.NO_ENCRYPTION == b"N"


def test_long_backend_keys_of_protocol_3_2() -> None:
    key = bytes(range(32))
    assert decode.backend_key(struct.pack("!i", 7) + key) == (7, int.from_bytes(key, "big"))
