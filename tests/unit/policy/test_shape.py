"""A text's shape: literal values out, everything else exactly as it was; no shape where
the lexing is anything but plain. Two texts with one shape must differ only in the values
of literals, checked here against PostgreSQL's own grammar."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.policy.analysis import analyse
from appliance.policy.shape import shape


@pytest.mark.parametrize(
    ("text", "shaped"),
    [
        ("SELECT abalance FROM pgbench_accounts WHERE aid = 71234;",
         "SELECT abalance FROM pgbench_accounts WHERE aid = \0i;"),
        ("select 'it''s', 1.5, -2 from t", "select \0s, \0f, -\0i from t"),
        ('select "col 1", t1.x2 from "t''9" where y = $1', None),
        ("select a[3] from t\nwhere b = 'x'", "select a[\0i] from t\nwhere b = \0s"),
        ("select x::int4, $12 from t", "select x::int4, $12 from t"),
        ("select 1", "select \0i"),
        ("select date '2024-01-01', 12.5", "select date \0s, \0f"),
    ],
)  # fmt: skip
def test_literals_come_out_and_nothing_else(text: str, shaped: str | None) -> None:
    expected = text if shaped is None else shaped
    assert shape(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "select E'a\\'b'",  # an escape string
        "select 'a\\' , '; delete from t; --'",  # a backslash: standard_conforming_strings
        "select $$body$$",
        "do $x$ begin end $x$",
        "select B'101', X'1F', N'x', U&'d\\0061t'",
        "select 1e5",
        "select 0x1F",
        "select 1_000",
        "select 1234567890",
        "select 1.",
        "select 'unterminated",
        'select "unterminated',
        "select /* unterminated",
        "select 1\0",
        # Comments: where one ends is PostgreSQL's lexer's to say (a \r ends a -- comment).
        "SELECT --\r'\n'; --'",
        "select a[3] from t -- 'not a string' 42\nwhere b = 'x'",
        "select /* 1 /* 2 */ 3 */ 4",
        "SET U&\"search!005fpath\" UESCAPE '!' TO evil, pg_catalog",
        "select 1 where 'a' like 'b' escape 'c'",
    ],
)
def test_anything_less_plain_has_no_shape(text: str) -> None:
    assert shape(text) is None


def test_digits_that_are_not_ascii_are_letters() -> None:
    """PostgreSQL reads a non-ASCII digit as part of an identifier: select * from ٣ names a
    table, and it must not share a shape with select * from ٤."""
    assert shape("select * from ٣") == "select * from ٣"
    assert shape("select * from ٣") != shape("select * from ٤")


def test_a_shape_is_never_another_commands_text() -> None:
    assert "\0" in (shape("select 1") or "")


def _facts(text: str) -> object:
    found = analyse(text)
    return (found.error is None, [
        (s.kind, s.category, s.reads, s.writes, s.functions, s.no_where, s.unknown, s.inner)
        for s in found.statements
    ])  # fmt: skip


_PIECES = st.sampled_from(
    ["select", "delete", "from", "where", "t", "billing.t", '"T"', "x", "=", "1", "2.5",
     "'a'", "'b''c'", ",", "(", ")", ";", "--c\n", "/*c*/", "and", "true", "now()", "$1",
     "update", "set", "insert into", "values", "\n", " ", "\r", "explain", "(analyze", "--"]
)  # fmt: skip


@given(st.lists(_PIECES, min_size=1, max_size=14), st.data())
def test_texts_with_one_shape_have_the_same_facts(pieces: list[str], data: st.DataObject) -> None:
    text = " ".join(pieces)
    other = " ".join(
        data.draw(st.sampled_from(["7", "80", "8.25", "0.5", "'q'", "'r''s'"])) if p in ("1",
        "2.5", "'a'", "'b''c'") else p for p in pieces
    )  # fmt: skip
    if shape(text) is not None and shape(text) == shape(other):
        assert _facts(text) == _facts(other), (text, other)
