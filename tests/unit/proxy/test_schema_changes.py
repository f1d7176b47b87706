"""Which commands make a masked session read its catalog again: DDL and what cannot be
known, decided once per shape of text unless a literal's value decided it."""

from __future__ import annotations

import pytest

from appliance.model import Command
from appliance.policy import analysis
from appliance.proxy import masks as masks_module
from appliance.proxy.masks import Masking


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = analysis.analyse

    def counted(text: str) -> analysis.Analysis:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(masks_module, "analyse", counted)
    return seen


@pytest.mark.parametrize(
    ("text", "changes"),
    [
        ("select abalance from pgbench_accounts where aid = 7", False),
        ("update t set a = 'x' where id = 1", False),
        ("alter table t add column c text default 'x'", True),
        ("create view v as select 1", True),
        ("create table t2 as select 1", True),
        ("select 1 into t3", True),
        ("do 'begin end'", True),
        ("selec 1", True),
    ],
)
def test_what_changes_the_schema(text: str, changes: bool) -> None:
    assert Masking((), b"k").changes_schema(Command("query", text)) is changes


def test_one_shape_is_read_once(parsed: list[str]) -> None:
    masking = Masking((), b"k")
    for aid in range(20):
        query = Command("query", f"select abalance from pgbench_accounts where aid = {aid}")
        assert masking.changes_schema(query) is False
    assert len(parsed) == 1
    for n in range(3):
        assert masking.changes_schema(Command("query", f"create table t{n} (a int default {n})"))
    assert len(parsed) == 4  # the table's name is part of the shape


def test_a_literal_that_decides_is_read_every_time(parsed: list[str]) -> None:
    """``EXPLAIN (ANALYZE 0)`` does not run its statement, ``(ANALYZE 1)`` does."""
    masking = Masking((), b"k")
    dry = Command("query", "explain (analyze 0) create table t as select 1")
    wet = Command("query", "explain (analyze 1) create table t as select 1")
    masking.changes_schema(dry)
    assert masking.changes_schema(wet) is True
    assert len(parsed) == 2
