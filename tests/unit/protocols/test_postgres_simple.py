"""Simple Query, COPY, FunctionCall and row capture, as bytes in and events out."""

from __future__ import annotations

import pgwire as pg
from playbook import LOGIN, READY, client, finished, play, server, started

from appliance.model import ErrorInfo
from appliance.protocols.postgres.events import Ready, SessionError

SELECT = "select id, name from users"
ROWS = (
    pg.row_description("id", "name"),
    pg.data_row(b"1", b"ada"),
    pg.data_row(b"2", None),
    pg.data_row(b"3", b"grace"),
    pg.command_complete("SELECT 3"),
    pg.ready_for_query(),
)


def test_one_statement() -> None:
    play(
        *LOGIN,
        client(pg.query(SELECT))(started(1, "query", SELECT)),
        server(*ROWS)(finished(1, tags=["SELECT 3"], rows=3, bytes=pg.size(*ROWS)), READY),
    )


def test_several_statements_in_one_query_are_one_command() -> None:
    text = "insert into t values (1),(2),(3); update t set x = 1 where x > 1; select * from t"
    answer = (
        pg.command_complete("INSERT 0 3"),
        pg.command_complete("UPDATE 2"),
        pg.row_description("x"),
        pg.data_row(b"1"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query("T"),
    )
    play(
        *LOGIN,
        client(pg.query(text))(started(1, "query", text)),
        server(*answer)(
            finished(
                1, tags=["INSERT 0 3", "UPDATE 2", "SELECT 1"], rows=6, bytes=pg.size(*answer)
            ),
            Ready("T"),
        ),
    )


def test_empty_query() -> None:
    answer = (pg.empty_query_response(), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.query(""))(started(1, "query", "")),
        server(*answer)(finished(1, tags=[""], bytes=pg.size(*answer)), READY),
    )


def test_error_keeps_the_first_error_and_the_tags_before_it() -> None:
    boom = ErrorInfo("ERROR", "22012", "division by zero")
    answer = (
        pg.command_complete("DELETE 4"),
        pg.row_description("x"),
        pg.error_response(boom.message, boom.code),
        pg.ready_for_query("E"),
    )
    play(
        *LOGIN,
        client(pg.query("delete from t; select 1/0"))(
            started(1, "query", "delete from t; select 1/0")
        ),
        server(*answer)(
            finished(1, "error", tags=["DELETE 4"], rows=4, error=boom, bytes=pg.size(*answer)),
            Ready("E"),
        ),
    )


def test_pipelined_queries_are_answered_in_order() -> None:
    first = (pg.command_complete("BEGIN"), pg.ready_for_query("T"))
    second = (pg.command_complete("COMMIT"), pg.ready_for_query("I"))
    play(
        *LOGIN,
        client(pg.query("begin"), pg.query("commit"))(
            started(1, "query", "begin"), started(2, "query", "commit")
        ),
        server(*first, *second)(
            finished(1, tags=["BEGIN"], bytes=pg.size(*first)),
            Ready("T"),
            finished(2, tags=["COMMIT"], bytes=pg.size(*second)),
            READY,
        ),
    )


def test_asynchronous_messages_pass_through() -> None:
    answer = (
        pg.notice_response("there is no transaction in progress"),
        pg.parameter_status("TimeZone", "UTC"),
        pg.notification_response(77, "jobs", "new"),
        pg.command_complete("SET"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("set timezone = 'UTC'"))(started(1, "query", "set timezone = 'UTC'")),
        server(*answer)(finished(1, tags=["SET"], bytes=pg.size(*answer)), READY),
        server(pg.notification_response(77, "jobs", "idle"))(),
    )


def test_fatal_error_while_idle_is_a_session_error() -> None:
    shutdown = ErrorInfo("FATAL", "57P01", "terminating connection due to administrator command")
    play(
        *LOGIN,
        server(pg.error_response(shutdown.message, shutdown.code, "FATAL"))(SessionError(shutdown)),
    )


def test_copy_out() -> None:
    lines = [b"1\tada\n", b"2\tgrace\n", b"3\tlinus\n"]
    answer = (
        pg.copy_out_response(2),
        *(pg.copy_data(line) for line in lines),
        pg.copy_done(),
        pg.command_complete("COPY 3"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("copy users to stdout"))(started(1, "query", "copy users to stdout")),
        server(*answer)(
            finished(
                1,
                tags=["COPY 3"],
                rows=3,
                bytes=pg.size(*answer),
                copy_bytes=sum(map(len, lines)),
            ),
            READY,
        ),
    )


def test_copy_in() -> None:
    lines = [b"1\tada\n", b"2\tgrace\n"]
    done = (pg.command_complete("COPY 2"), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.query("copy users from stdin"))(started(1, "query", "copy users from stdin")),
        server(pg.copy_in_response(2))(),
        client(*(pg.copy_data(line) for line in lines), pg.copy_done())(),
        server(*done)(
            finished(
                1,
                tags=["COPY 2"],
                rows=2,
                bytes=pg.size(pg.copy_in_response(2), *done),
                copy_bytes=sum(map(len, lines)),
            ),
            READY,
        ),
    )


def test_copy_in_failed_by_the_client() -> None:
    failure = ErrorInfo("ERROR", "57014", "COPY from stdin failed: agent changed its mind")
    answer = (pg.error_response(failure.message, failure.code), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.query("copy users from stdin"))(started(1, "query", "copy users from stdin")),
        server(pg.copy_in_response(2))(),
        client(pg.copy_data(b"1\tada\n"), pg.copy_fail("agent changed its mind"))(),
        server(*answer)(
            finished(
                1,
                "error",
                error=failure,
                copy_bytes=len(b"1\tada\n"),
                bytes=pg.size(pg.copy_in_response(2), *answer),
            ),
            READY,
        ),
    )


def test_copy_data_outside_copy_is_ignored() -> None:
    play(*LOGIN, client(pg.copy_data(b"stray"), pg.copy_done())())


def test_function_call() -> None:
    call = pg.function_call(1598, [b"\x00\x00\x00\x05", b"abc", None], formats=[1, 0, 0])
    answer = (pg.function_call_response(b"\x00\x00\x00\x06"), pg.ready_for_query())
    play(
        *LOGIN,
        client(call)(started(1, "function_call", "function 1598", "\\x00000005", "abc", None)),
        server(*answer)(finished(1, bytes=pg.size(*answer)), READY),
    )


def test_failed_function_call() -> None:
    missing = ErrorInfo("ERROR", "42883", "function 99 does not exist")
    answer = (pg.error_response(missing.message, missing.code), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.function_call(99, []))(started(1, "function_call", "function 99")),
        server(*answer)(finished(1, "error", error=missing, bytes=pg.size(*answer)), READY),
    )


# --- row capture -----------------------------------------------------------------------------


def _capture(rows: list[list[str | None]], truncated: bool, **options: int) -> None:
    play(
        *LOGIN,
        client(pg.query(SELECT))(started(1, "query", SELECT)),
        server(*ROWS)(
            finished(
                1,
                tags=["SELECT 3"],
                rows=3,
                bytes=pg.size(*ROWS),
                columns=["id", "name"],
                captured=rows,
                truncated=truncated,
            ),
            READY,
        ),
        **options,
    )


def test_capture_all_rows() -> None:
    _capture([["1", "ada"], ["2", None], ["3", "grace"]], False, capture_rows=10)


def test_capture_exactly_all_rows_is_not_truncated() -> None:
    _capture([["1", "ada"], ["2", None], ["3", "grace"]], False, capture_rows=3)


def test_capture_truncated_by_rows() -> None:
    _capture([["1", "ada"], ["2", None]], True, capture_rows=2)


def test_capture_truncated_by_bytes() -> None:
    first_two = pg.size(pg.data_row(b"1", b"ada"), pg.data_row(b"2", None)) - 10  # bodies only
    _capture([["1", "ada"], ["2", None]], True, capture_rows=10, capture_bytes=first_two)


def test_capture_stops_at_the_first_row_that_does_not_fit() -> None:
    answer = (
        pg.row_description("blob"),
        pg.data_row(b"x" * 100),
        pg.data_row(b"small"),
        pg.command_complete("SELECT 2"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("select blob"))(started(1, "query", "select blob")),
        server(*answer)(
            finished(
                1,
                tags=["SELECT 2"],
                rows=2,
                bytes=pg.size(*answer),
                columns=["blob"],
                captured=[],
                truncated=True,
            ),
            READY,
        ),
        capture_rows=10,
        capture_bytes=50,
    )


def test_capture_off_records_no_rows() -> None:
    play(
        *LOGIN,
        client(pg.query(SELECT))(started(1, "query", SELECT)),
        server(*ROWS)(finished(1, tags=["SELECT 3"], rows=3, bytes=pg.size(*ROWS)), READY),
        capture_rows=0,
    )


def test_capture_binary_columns_as_hex() -> None:
    answer = (
        pg.row_description("n", "t", formats=[1, 0]),
        pg.data_row(b"\x00\x00\x00\x2a", b"text"),
        pg.command_complete("FETCH 1"),
        pg.ready_for_query("T"),
    )
    play(
        *LOGIN,
        client(pg.query("fetch 1 from binary_cursor"))(
            started(1, "query", "fetch 1 from binary_cursor")
        ),
        server(*answer)(
            finished(
                1,
                tags=["FETCH 1"],
                rows=1,
                bytes=pg.size(*answer),
                columns=["n", "t"],
                captured=[["\\x0000002a", "text"]],
            ),
            Ready("T"),
        ),
        capture_rows=10,
    )


def test_capture_keeps_the_first_result_set_only() -> None:
    answer = (
        pg.row_description("a"),
        pg.data_row(b"1"),
        pg.command_complete("SELECT 1"),
        pg.row_description("b", "c"),
        pg.data_row(b"2", b"3"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("select 1 a; select 2 b, 3 c"))(
            started(1, "query", "select 1 a; select 2 b, 3 c")
        ),
        server(*answer)(
            finished(
                1,
                tags=["SELECT 1", "SELECT 1"],
                rows=2,
                bytes=pg.size(*answer),
                columns=["a"],
                captured=[["1"]],
                truncated=True,
            ),
            READY,
        ),
        capture_rows=10,
    )


def test_capture_is_per_command() -> None:
    first = (
        pg.row_description("a"),
        pg.data_row(b"1"),
        pg.data_row(b"2"),
        pg.command_complete("SELECT 2"),
        pg.ready_for_query(),
    )
    second = (
        pg.row_description("b"),
        pg.data_row(b"3"),
        pg.command_complete("SELECT 1"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("q1"), pg.query("q2"))(
            started(1, "query", "q1"), started(2, "query", "q2")
        ),
        server(*first, *second)(
            finished(
                1,
                tags=["SELECT 2"],
                rows=2,
                bytes=pg.size(*first),
                columns=["a"],
                captured=[["1"]],
                truncated=True,
            ),
            READY,
            finished(
                2,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(*second),
                columns=["b"],
                captured=[["3"]],
            ),
            READY,
        ),
        capture_rows=1,
    )


def test_huge_rows_are_skipped_not_buffered_even_with_capture() -> None:
    huge = pg.data_row(b"x" * 5000)
    answer = (
        pg.row_description("blob"),
        huge,
        pg.command_complete("SELECT 1"),
        pg.ready_for_query(),
    )
    play(
        *LOGIN,
        client(pg.query("select blob"))(started(1, "query", "select blob")),
        server(*answer)(
            finished(
                1,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(*answer),
                columns=["blob"],
                captured=[],
                truncated=True,
            ),
            READY,
        ),
        capture_rows=10,
        max_message=1000,
    )
