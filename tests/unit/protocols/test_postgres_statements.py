"""Prepared statements the wire cannot vouch for: code that may redefine them, and SQL that does."""

from __future__ import annotations

import pgwire as pg
from playbook import LOGIN, READY, Step, client, finished, play, server, started, unknown

from appliance.model import Command, ErrorInfo, Prepared
from appliance.protocols.postgres import decode
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import CommandStarted, Ready

DO = "DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; EXECUTE 'PREPARE s1 AS DELETE FROM t'; END $$"
INSERT = "insert into dt values (1)"  # dt has a deferred constraint trigger running such SQL


def _done(*tags: str, status: str = "I") -> tuple[bytes, ...]:
    return (*(pg.command_complete(tag) for tag in tags), pg.ready_for_query(status))


def _query(n: int, text: str, *tags: str, status: str = "I") -> tuple[Step, Step]:
    """A simple Query and its answer, with no prepared statement run."""
    answer = _done(*tags, status=status)
    return (
        client(pg.query(text))(started(n, "query", text)),
        server(*answer)(
            finished(
                n,
                tags=list(tags),
                rows=sum(decode.tag_rows(tag) for tag in tags),
                bytes=pg.size(*answer),
            ),
            Ready(status),
        ),
    )


def _parsed(name: str, text: str) -> tuple[Step, Step]:
    return (
        client(pg.parse(name, text), pg.sync())(),
        server(pg.parse_complete(), pg.ready_for_query())(READY),
    )


def _run(n: int, name: str) -> Step:
    return client(pg.bind("", name), pg.execute(), pg.sync())


def test_a_do_block_may_redefine_a_named_statement() -> None:
    # The server runs DELETE FROM t here: the record must not say "select 1".
    play(
        *LOGIN,
        *_parsed("s1", "select 1"),
        *_query(1, DO, "DO"),
        _run(2, "s1")(
            unknown(
                2, Prepared("s1", "select 1", "parsed", 0, "changed", 1), statement="s1", portal=""
            )
        ),
    )


def test_any_statement_that_may_run_code_may_redefine_it() -> None:
    # A trigger on t, a function behind a view, an operator on the search_path: the agent
    # owns the schema, so any of these statements may run its code.
    for text in ("insert into t values (1)", "select * from v", "call p()", "select 1 + 1"):
        play(
            *LOGIN,
            *_parsed("s1", "select 1"),
            client(pg.query(text))(started(1, "query", text)),
            _run(2, "s1")(
                unknown(
                    2,
                    Prepared("s1", "select 1", "parsed", 0, "changed", 1),
                    statement="s1",
                    portal="",
                )
            ),
        )


def test_statements_that_cannot_run_code_leave_it_known() -> None:
    texts = [
        "BEGIN",
        "SET search_path = public; SHOW search_path",
        "savepoint a; release savepoint a",
        "rollback",
        "RESET ALL",
        "start transaction isolation level serializable",
        "commit",  # no code ran in its transaction, so it has none to run at commit
        "prepare other as select 2; deallocate other",
        "/* a comment */ show all;",
        "",
    ]
    steps = [step for n, text in enumerate(texts, 1) for step in _query_steps(n, text)]
    n = len(texts) + 1
    play(
        *LOGIN,
        *_parsed("s1", "select 1"),
        *steps,
        _run(n, "s1")(started(n, "execute", "select 1", statement="s1", portal="")),
    )


def _query_steps(n: int, text: str) -> tuple[Step, ...]:
    return (client(pg.query(text))(started(n, "query", text)),)


def test_set_constraints_may_fire_deferred_triggers() -> None:
    text = "set constraints all immediate"
    play(
        *LOGIN,
        *_parsed("s1", "select 1"),
        client(pg.query(text))(started(1, "query", text)),
        _run(2, "s1")(
            unknown(
                2, Prepared("s1", "select 1", "parsed", 0, "changed", 1), statement="s1", portal=""
            )
        ),
    )


def test_commit_may_run_code_left_by_an_earlier_command() -> None:
    # A deferred trigger queued by the INSERT runs at COMMIT, after s4 was prepared.
    prepare = "prepare s4 as select 'fresh'"
    ran = Prepared("s4", "select 'fresh'", "prepared", 3, "changed", 2)
    play(
        *LOGIN,
        *_query(1, "begin", "BEGIN", status="T"),
        *_query(2, INSERT, "INSERT 0 1", status="T"),
        *_query(3, prepare, "PREPARE", status="T"),
        *_query(4, "commit", "COMMIT"),
        client(pg.query("execute s4"))(
            CommandStarted(5, Command("query", "execute s4", prepared=(ran,)))
        ),
    )


def _insert_then_parse(n: int, status: str = "I") -> tuple[Step, Step]:
    """An INSERT (a deferred trigger on dt may run at commit), then s2 parsed, one pipeline."""
    answer = (
        pg.parse_complete(),
        pg.bind_complete(),
        pg.command_complete("INSERT 0 1"),
        pg.parse_complete(),
    )
    return (
        client(
            pg.parse("", INSERT),
            pg.bind("", ""),
            pg.execute(),
            pg.parse("s2", "select 2"),
            pg.sync(),
        )(started(n, "execute", INSERT, statement="", portal="")),
        server(*answer, pg.ready_for_query(status))(
            finished(n, tags=["INSERT 0 1"], rows=1, bytes=pg.size(*answer[1:3])), Ready(status)
        ),
    )


def test_a_sync_may_commit_code_left_by_a_command_before_a_parse() -> None:
    # A deferred trigger queued by the INSERT runs at the Sync's commit, after s2's Parse.
    play(
        *LOGIN,
        *_insert_then_parse(1),
        client(pg.bind("", "s2"), pg.execute(), pg.sync())(
            unknown(
                2, Prepared("s2", "select 2", "parsed", 1, "changed", 1), statement="s2", portal=""
            )
        ),
    )


def test_once_idle_the_commit_has_run() -> None:
    # ReadyForQuery 'I' after the INSERT: its transaction is over, and a later Parse is safe.
    answer = (pg.parse_complete(), pg.bind_complete(), pg.command_complete("INSERT 0 1"))
    play(
        *LOGIN,
        client(pg.parse("", INSERT), pg.bind("", ""), pg.execute(), pg.sync())(
            started(1, "execute", INSERT, statement="", portal="")
        ),
        server(*answer, pg.ready_for_query())(
            finished(1, tags=["INSERT 0 1"], rows=1, bytes=pg.size(*answer[1:])), READY
        ),
        *_parsed("s2", "select 2"),
        _run(2, "s2")(started(2, "execute", "select 2", statement="s2", portal="")),
    )


def test_inside_a_block_a_sync_commits_nothing() -> None:
    # psycopg's way: BEGIN, then statements prepared and run inside the transaction.
    play(
        *LOGIN,
        *_query(1, "BEGIN", "BEGIN", status="T"),
        *_insert_then_parse(2, "T"),
        _run(3, "s2")(started(3, "execute", "select 2", statement="s2", portal="")),
    )


def test_a_block_is_trusted_only_once_the_server_confirms_it() -> None:
    # The BEGIN never runs (the division fails first), so the Sync does commit the INSERT's
    # transaction, deferred triggers and all, after s2 was parsed.
    play(
        *LOGIN,
        client(
            pg.query("select 1/0; begin"),
            pg.parse("", INSERT),
            pg.bind("", ""),
            pg.execute(),
            pg.parse("s2", "select 2"),
            pg.sync(),
            pg.bind("", "s2"),
            pg.execute(),
            pg.sync(),
        )(
            started(1, "query", "select 1/0; begin"),
            started(2, "execute", INSERT, statement="", portal=""),
            unknown(
                3, Prepared("s2", "select 2", "parsed", 2, "changed", 2), statement="s2", portal=""
            ),
        ),
    )


def test_the_unnamed_statement_is_beyond_codes_reach() -> None:
    # SQL cannot name the unnamed statement, and DISCARD ALL keeps it.
    answer = (pg.parse_complete(), pg.bind_complete(), pg.command_complete("DO"))
    play(
        *LOGIN,
        *_parsed("", "select 42"),
        client(pg.parse("d", DO), pg.bind("", "d"), pg.execute(), pg.sync())(
            started(1, "execute", DO, statement="d", portal="")
        ),
        server(*answer, pg.ready_for_query())(
            finished(1, tags=["DO"], bytes=pg.size(*answer[1:])), READY
        ),
        _run(2, "")(started(2, "execute", "select 42", statement="", portal="")),
    )


def test_a_bind_alone_may_run_code_while_planning() -> None:
    # Planning folds immutable functions: evil() runs at the Bind, with no Execute at all.
    play(
        *LOGIN,
        *_parsed("s3", "select 3"),
        *_parsed("e", "select evil()"),
        client(pg.bind("pe", "e"), pg.sync())(),
        _run(1, "s3")(
            unknown(
                1, Prepared("s3", "select 3", "parsed", 0, "changed", 1), statement="s3", portal=""
            )
        ),
    )


def test_a_named_portal_may_be_replaced_before_its_execute() -> None:
    # swap() closes portal p1 and opens a cursor of the same name: the server returns its rows.
    original = "select 'original'"
    replaced = Prepared("p1", original, "bound", 0, "changed", 1, "portal")
    play(
        *LOGIN,
        client(
            pg.parse("", original),
            pg.bind("p1", ""),
            pg.parse("", "select swap()"),
            pg.bind("p2", ""),
            pg.execute("p2"),
            pg.execute("p1"),
            pg.sync(),
        )(
            started(1, "execute", "select swap()", statement="", portal="p2"),
            unknown(2, replaced, statement="", portal="p1"),
        ),
    )


def test_a_portal_resumed_after_suspension_is_known() -> None:
    # A running portal cannot be dropped, so its own run cannot replace it.
    sql = "select n from generate_series(1, 3) n"
    play(
        *LOGIN,
        client(pg.parse("", sql), pg.bind("cur", ""), pg.execute("cur", 2), pg.flush())(
            started(1, "execute", sql, statement="", portal="cur")
        ),
        client(pg.execute("cur", 2), pg.sync())(
            started(2, "execute", sql, statement="", portal="cur")
        ),
    )


def test_sql_execute_names_the_statement_it_runs() -> None:
    text = "prepare s1 (int) as delete from t where id = $1; execute s1(5)"
    ran = Prepared("s1", "delete from t where id = $1", "prepared", 1)
    play(
        *LOGIN,
        client(pg.query(text))(CommandStarted(1, Command("query", text, prepared=(ran,)))),
    )


def test_sql_execute_of_a_statement_code_may_have_changed() -> None:
    ran = Prepared("s1", "select 1", "prepared", 1, "changed", 2)
    play(
        *LOGIN,
        *_query(1, "prepare s1 as select 1", "PREPARE"),
        *_query(2, "select f()", "SELECT 1"),
        client(pg.query("EXECUTE S1"))(
            CommandStarted(3, Command("query", "EXECUTE S1", prepared=(ran,)))
        ),
    )


def test_sql_execute_of_a_statement_never_prepared() -> None:
    play(
        *LOGIN,
        client(pg.query('explain analyze execute "Nope"'))(
            CommandStarted(
                1,
                Command(
                    "query",
                    'explain analyze execute "Nope"',
                    prepared=(Prepared("Nope", None, doubt="unseen"),),
                ),
            )
        ),
    )


def test_sql_deallocate_and_deallocate_all() -> None:
    play(
        *LOGIN,
        *_parsed("s1", "select 1"),
        *_parsed("s2", "select 2"),
        *_query(1, "deallocate prepare s1", "DEALLOCATE"),
        _run(2, "s2")(started(2, "execute", "select 2", statement="s2", portal="")),
        _run(3, "s1")(
            unknown(
                3, Prepared("s1", None, doubt="unseen", changed_by=2), statement="s1", portal=""
            )
        ),
    )
    play(
        *LOGIN,
        *_parsed("s2", "select 2"),
        *_parsed("", "select 0"),
        *_query(1, "DEALLOCATE ALL", "DEALLOCATE ALL"),
        _run(2, "s2")(unknown(2, Prepared("s2", None, doubt="unseen"), statement="s2", portal="")),
    )


def test_a_prepare_refused_for_a_taken_name_leaves_the_old_text() -> None:
    taken = ErrorInfo("ERROR", "42P05", 'prepared statement "s1" already exists')
    answer = (pg.error_response(taken.message, taken.code), pg.ready_for_query())
    text = "prepare s1 as delete from t"
    play(
        *LOGIN,
        *_query(1, "prepare s1 as select 1", "PREPARE"),
        client(pg.query(text))(started(2, "query", text)),
        server(*answer)(finished(2, "error", error=taken, bytes=pg.size(*answer)), READY),
        _run(3, "s1")(started(3, "execute", "select 1", statement="s1", portal="")),
    )


def test_a_query_failing_part_way_keeps_what_ran_before_the_error() -> None:
    taken = ErrorInfo("ERROR", "42P05", 'prepared statement "a" already exists')
    text = "prepare a as select 1; prepare a as select 2; prepare b as select 3"
    answer = (
        pg.command_complete("PREPARE"),
        pg.error_response(taken.message, taken.code),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query(text))(started(1, "query", text)),
        server(*answer)(
            finished(1, "error", tags=["PREPARE"], error=taken, bytes=pg.size(*answer)), READY
        ),
        _run(2, "a")(started(2, "execute", "select 1", statement="a", portal="")),
        # Running "a" (a SELECT) may have run code, and that code may have prepared "b".
        _run(3, "b")(
            unknown(3, Prepared("b", None, doubt="unseen", changed_by=2), statement="b", portal="")
        ),
    )


def test_a_parsed_prepare_and_execute_are_followed_too() -> None:
    answer = (pg.parse_complete(), pg.bind_complete(), pg.command_complete("PREPARE"))
    ran = Prepared("s9", "delete from t", "prepared", 1)
    play(
        *LOGIN,
        client(
            pg.parse("", "prepare s9 as delete from t"), pg.bind("", ""), pg.execute(), pg.sync()
        )(started(1, "execute", "prepare s9 as delete from t", statement="", portal="")),
        server(*answer, pg.ready_for_query())(
            finished(1, tags=["PREPARE"], bytes=pg.size(*answer[1:])), READY
        ),
        client(pg.parse("", "execute s9"), pg.bind("", ""), pg.execute(), pg.sync())(
            CommandStarted(
                2, Command("execute", "execute s9", statement="", portal="", prepared=(ran,))
            )
        ),
    )


def test_names_are_one_when_their_first_63_bytes_agree() -> None:
    # The server keys prepared statements by their first 63 bytes.
    long_a, long_b = "x" * 63 + "a", "x" * 63 + "b"
    play(
        *LOGIN,
        *_parsed(long_a, "delete from t"),
        _run(1, long_b)(started(1, "execute", "delete from t", statement=long_b, portal="")),
    )


def test_the_record_never_states_an_unknown_text() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    conn.receive_client(pg.parse("s1", "select 1") + pg.sync())
    conn.receive_server(pg.parse_complete() + pg.ready_for_query())
    conn.receive_client(pg.query(DO))
    (event,) = conn.receive_client(pg.bind("", "s1") + pg.execute() + pg.sync())
    assert isinstance(event, CommandStarted)
    command = event.command
    assert not command.text_known
    assert command.text == (
        "unknown: statement 's1' may have been redefined by command 1;"
        " last parsed before any command as: select 1"
    )
    assert command.as_dict()["prepared"] == [
        {
            "kind": "statement",
            "name": "s1",
            "text": "select 1",
            "how": "parsed",
            "defined": 0,
            "doubt": "changed",
            "changed_by": 1,
        }
    ]
    assert command.as_dict()["text_known"] is False


def test_a_failed_prepare_in_a_pipeline_is_settled_by_its_error() -> None:
    broken = ErrorInfo("ERROR", "42601", "syntax error")
    text = "prepare s1 as selec 1"
    answer = (pg.error_response(broken.message, broken.code), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.query(text))(started(1, "query", text)),
        server(*answer)(finished(1, "error", error=broken, bytes=pg.size(*answer)), READY),
        _run(2, "s1")(unknown(2, Prepared("s1", None, doubt="unseen"), statement="s1", portal="")),
    )


def test_statements_parsed_and_closed_without_end_are_not_all_kept() -> None:
    # Memory must not grow with every statement ever parsed while no code runs; the ones
    # still defined must still be marked when code comes.
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    conn.receive_client(pg.parse("keep", "select 1") + pg.sync())
    conn.receive_server(pg.parse_complete() + pg.ready_for_query())
    for i in range(3):
        churn = b"".join(
            pg.parse(f"s{i}_{j}", "select 2") + pg.close("S", f"s{i}_{j}") for j in range(2000)
        )
        conn.receive_client(churn + pg.sync())
        conn.receive_server(
            (pg.parse_complete() + pg.close_complete()) * 2000 + pg.ready_for_query()
        )
    assert len(conn._statements._fresh) <= 4097
    conn.receive_client(pg.query(DO))
    (event,) = conn.receive_client(pg.bind("", "keep") + pg.execute() + pg.sync())
    assert isinstance(event, CommandStarted)
    assert event.command.prepared == (Prepared("keep", "select 1", "parsed", 0, "changed", 1),)


def test_a_portal_replaced_by_another_bind_stays_unknown_after_its_run() -> None:
    # p2's planning (a Bind counts with the next command, here p's Execute) may replace p;
    # p's own run must not clear that for its next Execute.
    original = "select n from generate_series(1, 3) n"
    replaced = Prepared("p", original, "bound", 0, "changed", 1, "portal")
    play(
        *LOGIN,
        client(
            pg.parse("", original),
            pg.bind("p", ""),
            pg.parse("", "select swap()"),
            pg.bind("p2", ""),
            pg.execute("p", 1),
            pg.execute("p", 1),
            pg.sync(),
        )(
            unknown(1, replaced, portal="p", statement=""),
            unknown(2, replaced, portal="p", statement=""),
        ),
    )
