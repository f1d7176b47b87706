"""The values of masked columns that a command carries in its own text and parameters are
masked in its record: which literals and parameters they are, read from the parse tree."""

from __future__ import annotations

import pytest

from appliance.policy.masking import Column, SessionMasks, Snapshot, Table, withheld
from appliance.policy.maskrules import MaskRule

SNAPSHOT = Snapshot(
    tables={
        16400: Table(
            "public",
            "people",
            "r",
            {
                1: Column("id", "int4", "int4"),
                2: Column("name", "text", "text"),
                3: Column("ssn", "text", "text"),
                4: Column("card", "text", "text"),
            },
        )
    }
)
RULES = (
    MaskRule("ssn", tables=("people",), columns=("ssn",)),
    MaskRule("card", tables=("people",), columns=("card",), method="partial"),
)


def masks(rules: tuple[MaskRule, ...] = RULES) -> SessionMasks:
    return SessionMasks(rules, lambda: SNAPSHOT, b"k" * 32)


@pytest.mark.parametrize(
    ("text", "recorded"),
    [
        (
            "insert into people (id, ssn, name) values (1, '123-45-6789', 'ann')",
            "insert into people (id, ssn, name) values (1, '[masked:ssn]', 'ann')",
        ),
        (  # the table's own order; several rows; E'' strings and casts
            "insert into people values (1, 'ann', E'123\\x2d45', '4111111111111111'::text),"
            " (2, 'bob', '987-65-4321', null)",
            "insert into people values (1, 'ann', '[masked:ssn]', '***1111'::text),"
            " (2, 'bob', '[masked:ssn]', null)",
        ),
        (
            "update people set ssn = '123-45-6789', name = 'x' where id = 7",
            "update people set ssn = '[masked:ssn]', name = 'x' where id = 7",
        ),
        (  # a filter on a masked column: every value of the statement is masked
            "update people set name = 'x' where ssn = '123-45-6789' and id = 7",
            "update people set name = 'x' where ssn = '[masked:ssn]' and id = '[masked:ssn]'",
        ),
        (
            "select id from people p where p.ssn like '123%'",
            "select id from people p where p.ssn like '[masked:ssn]'",
        ),
        (  # a multiple assignment places nothing exactly
            "update people set (name, ssn) = ('x', '123') where id = 1",
            "update people set (name, ssn) = ('[masked:ssn]', '[masked:ssn]')"
            " where id = '[masked:ssn]'",
        ),
        (
            "insert into people (id, ssn) select 1, '123-45-6789'",
            "insert into people (id, ssn) select '[masked:ssn]', '[masked:ssn]'",
        ),
        (  # too many values for the table's order to place
            "insert into people values (1, 'a', 'b', 'c', '123-45-6789')",
            "insert into people values ('[masked:ssn]', '[masked:ssn]', '[masked:ssn]',"
            " '[masked:ssn]', '[masked:ssn]')",
        ),
        (  # from a CTE or another relation: every value of the statement
            "with v as (select '123' as s) insert into people (id, ssn) select 1, s from v",
            "with v as (select '[masked:ssn]' as s) insert into people (id, ssn)"
            " select '[masked:ssn]', s from v",
        ),
        (
            "update people set ssn = v.s from (values ('123')) v(s) where id = 1",
            "update people set ssn = v.s from (values ('[masked:ssn]')) v(s)"
            " where id = '[masked:ssn]'",
        ),
        ("update people set balance = -5 where id = 1", None),
        ("select id, ssn from people where id = 1", None),
        ("insert into other (ssn) values ('123')", None),
    ],
)
def test_what_the_record_keeps(text: str, recorded: str | None) -> None:
    found = masks().recorded(text, ())
    assert (found.text if found else None) == recorded


def test_a_negative_number_is_one_value() -> None:
    rules = (MaskRule("id", tables=("people",), columns=("id",)),)
    found = masks(rules).recorded("update people set id = -42 where name = 'a'", ())
    assert found is not None
    assert found.text == "update people set id = '[masked:id]' where name = 'a'"
    assert found.clear == ("-42",)


def test_parameters_and_tokens() -> None:
    rules = (MaskRule("ssn", tables=("people",), columns=("ssn",), method="token"),)
    m = masks(rules)
    found = m.recorded("insert into people (id, ssn) values ($1, $2)", ("1", "123-45-6789"))
    assert found is not None
    assert found.text == "insert into people (id, ssn) values ($1, $2)"
    assert set(found.params) == {2}
    again = m.recorded("update people set ssn = $1 where id = 2", ("123-45-6789",))
    assert again is not None and again.params[1] == found.params[2]  # a join key
    assert found.params[2].startswith("tok_") and "6789" not in found.params[2]
    assert found.clear == ("123-45-6789",)


def test_a_text_that_does_not_parse_keeps_no_literal() -> None:
    found = masks().recorded("insert into people values (1, '123-45-6789'", ("x",))
    assert found is not None
    assert "123-45-6789" not in found.text and found.params == {1: "[masked]"}


def test_an_execute_s_arguments_follow_its_statement() -> None:
    m = masks()
    assert m.carries_params("insert into people (id, ssn) values ($1, $2)")
    assert not m.carries_params("insert into people (id, name) values ($1, $2)")
    found = withheld("execute ins(1, '123-45-6789')", ())
    assert found is not None and found.text == "execute ins('[masked]', '[masked]')"


def test_wire_only_rules_leave_the_record() -> None:
    rules = (MaskRule("ssn", tables=("people",), columns=("ssn",), scope=("wire",)),)
    assert masks(rules).recorded("insert into people (ssn) values ('1')", ()) is None


def test_content_rules_read_every_string_and_parameter() -> None:
    rules = (MaskRule("pii", detectors=("email", "card")),)
    m = masks(rules)
    found = m.recorded(
        "insert into notes values ('write to alice@example.com', 'nothing', $1)",
        ("or bob@example.com", None),
    )
    assert found is not None
    assert found.text == "insert into notes values ('write to [masked:email]', 'nothing', $1)"
    assert found.params == {1: "or [masked:email]"}
    bare = m.recorded("insert into notes values (4111111111111111)", ())
    assert bare is not None and bare.text == "insert into notes values ('[masked:card]')"
    assert m.recorded("select 'nothing here'", ()) is None


def test_one_shape_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from appliance.policy import maskwrites

    calls: list[str] = []
    real = maskwrites.carried

    def counted(*args: object) -> object:
        calls.append(str(args[0]))
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(maskwrites, "carried", counted)
    m = masks()
    for i in range(10):
        assert m.recorded(f"select ssn from people where id = {i}", ()) is None
    assert len(calls) == 1
    for i in range(3):
        assert m.recorded(f"update people set ssn = '{i}' where id = 1", ()) is not None
    assert len(calls) == 4  # texts that carry values are read every time
