"""What a SQL text may do: its statements as the server splits them, and the few that cannot
run user code."""

from __future__ import annotations

import pytest

from appliance.protocols.postgres import sql
from appliance.protocols.postgres.sql import CODE, COMMIT, INERT, SETTING


def _steps(text: str) -> list[tuple[int, str, str, str]]:
    script = sql.script(text)
    assert script.readable, text
    return [(s.effect, s.op, s.name, s.body) for s in script.steps]


@pytest.mark.parametrize(
    ("text", "effect"),
    [
        ("BEGIN", INERT),
        ("begin isolation level serializable", INERT),
        ("START TRANSACTION READ ONLY", INERT),
        ("savepoint a", INERT),
        ("RELEASE SAVEPOINT a", INERT),
        ("show search_path", INERT),
        ("SET search_path = evil, public", SETTING),
        ("set local statement_timeout to 5", SETTING),
        ("RESET ALL", SETTING),
        ("ROLLBACK", SETTING),
        ("rollback to savepoint a", SETTING),
        ("ABORT", SETTING),
        ("COMMIT", COMMIT),
        ("end", COMMIT),
        ("PREPARE TRANSACTION 'gid'", COMMIT),
        # Everything else may run the agent's code.
        ("SET CONSTRAINTS ALL IMMEDIATE", CODE),  # fires pending deferred triggers
        ("COMMIT PREPARED 'gid'", CODE),
        ("select 1", CODE),
        ("insert into t values (1)", CODE),
        ("call p()", CODE),
        ("do $$ begin end $$", CODE),
        ("discard plans", CODE),
        ("listen x", CODE),
        ("start", CODE),
        ("(select 1)", CODE),
        ('"select" 1', CODE),
    ],
)
def test_what_may_run_code(text: str, effect: int) -> None:
    assert sql.script(text).effect == effect


def test_statements_are_split_where_the_server_splits_them() -> None:
    text = (
        "/* a /* nested */ comment; */ begin; -- a comment; still\n"
        "set application_name = 'a;b'; set x = $q$;$q$; prepare s as select ';';"
        ' deallocate "s"; select (1;2)'
    )
    assert _steps(text) == [
        (INERT, "", "", ""),
        (SETTING, "", "", ""),
        (SETTING, "", "", ""),
        (INERT, "prepare", "s", "select ';'"),
        (INERT, "deallocate", "s", ""),
        (CODE, "", "", ""),
    ]


def test_prepare_execute_deallocate_and_discard() -> None:
    assert _steps("PREPARE Wipe (int, text[]) AS delete from t where x = $1 ;") == [
        (INERT, "prepare", "wipe", "delete from t where x = $1")
    ]
    assert _steps('execute "Wipe"(1); EXPLAIN (analyze) EXECUTE wipe') == [
        (CODE, "execute", "Wipe", ""),
        (CODE, "execute", "wipe", ""),
    ]
    assert _steps("create temp table c as execute w(2) with no data") == [
        (CODE, "execute", "w", "")
    ]
    assert _steps("deallocate prepare all; deallocate all; discard all; deallocate prepare") == [
        (INERT, "deallocate all", "", ""),
        (INERT, "deallocate all", "", ""),
        (CODE, "deallocate all", "", ""),
        (INERT, "deallocate", "prepare", ""),  # a statement named "prepare"
    ]
    assert _steps('deallocate "all"') == [(INERT, "deallocate", "all", "")]


def test_names_are_folded_and_cut_as_the_server_does() -> None:
    assert sql.script("prepare " + "A" * 70 + " as select 1").steps[0].name == "a" * 63
    quoted = sql.script('prepare "' + "é" * 40 + '" as select 1').steps[0].name
    assert quoted == "é" * 31  # 62 bytes: a character is never cut in two


@pytest.mark.parametrize(
    "text",
    [
        "select 'a\\'; prepare s1 as delete from t; --'",  # where the string ends depends
        "select E'a\\''; prepare s1 as delete from t",
        "select U&'\\0041'; prepare s1 as delete from t",
        "create function f() returns int begin atomic select 1; select 2; end; prepare a as x",
        "select 'unterminated; prepare s1 as delete from t",
        "select 1 /* unterminated; prepare s1 as delete from t",
        "select $a$ unterminated; prepare s1 as delete from t",
        "select (1; prepare s1 as delete from t",
        "prepare é as select 1",  # an unquoted name beyond ASCII: folding depends on locale
        "prepare s1 as select 1; " + "select 1; " * 30000,  # too long to read on the loop
        "prepare s1",
        "deallocate s1 s2",
    ],
)
def test_what_cannot_be_read_for_sure_is_unreadable(text: str) -> None:
    script = sql.script(text)
    assert not script.readable
    assert script.effect == CODE


def test_planning_is_for_statements_the_planner_sees() -> None:
    for text in ("select 1", "WITH x AS (select 1) select * from x", "table t", "(values (1))"):
        assert sql.script(text).planned, text
    for text in ("execute s", "call p()", "do $$ $$", "explain select 1", "begin"):
        assert not sql.script(text).planned, text


def test_one_ordinary_statement_is_not_split() -> None:
    # However long, a text with one statement and an ordinary first word is plain code.
    huge = "insert into t values " + ",".join(f"({i}, 'a,b')" for i in range(60000)) + ";"
    script = sql.script(huge)
    assert script.readable and script.plain and script.planned
