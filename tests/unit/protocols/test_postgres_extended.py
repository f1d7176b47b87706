"""The extended query protocol: statements, portals, parameters, pipelines and their errors."""

from __future__ import annotations

import struct
import uuid

import pgwire as pg
import pytest
from playbook import LOGIN, READY, Step, client, finished, play, server, started, unknown

from appliance.model import ErrorInfo, Prepared
from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import Ready, SessionError

INT4, INT8, TEXT, BOOL, BYTEA, UUID = 23, 20, 25, 16, 17, 2950
SYNTAX = ErrorInfo("ERROR", "42601", 'syntax error at or near "selec"')


def _error(info: ErrorInfo) -> bytes:
    return pg.error_response(info.message, info.code, info.severity)


def test_unnamed_statement_and_portal() -> None:
    sql = "select $1::int"
    answer = (
        pg.bind_complete(),
        pg.row_description("int4"),
        pg.data_row(b"42"),
        pg.command_complete("SELECT 1"),
    )
    play(
        *LOGIN,
        client(
            pg.parse("", sql, [INT4]),
            pg.bind("", "", [b"42"]),
            pg.describe("P"),
            pg.execute(),
            pg.sync(),
        )(started(1, "execute", sql, "42", statement="", portal="")),
        server(pg.parse_complete(), *answer, pg.ready_for_query())(
            finished(1, tags=["SELECT 1"], rows=1, bytes=pg.size(*answer)), READY
        ),
    )


def test_named_statement_executed_twice() -> None:
    # The first run may redefine the statement (an UPDATE can fire a trigger running dynamic
    # SQL), so the second is recorded as unknown, with the text it was parsed with.
    sql = "update accounts set balance = balance + $1 where id = $2"
    answer = (pg.bind_complete(), pg.command_complete("UPDATE 1"))
    again = Prepared("s1", sql, "parsed", 0, "changed", 1)
    play(
        *LOGIN,
        client(pg.parse("s1", sql), pg.sync())(),
        server(pg.parse_complete(), pg.ready_for_query())(READY),
        client(
            pg.bind("", "s1", [b"10", b"7"]),
            pg.execute(),
            pg.bind("", "s1", [b"-5", b"8"]),
            pg.execute(),
            pg.sync(),
        )(
            started(1, "execute", sql, "10", "7", statement="s1", portal=""),
            unknown(2, again, "-5", "8", statement="s1", portal=""),
        ),
        server(*answer, *answer, pg.ready_for_query())(
            finished(1, tags=["UPDATE 1"], rows=1, bytes=pg.size(*answer)),
            finished(2, tags=["UPDATE 1"], rows=1, bytes=pg.size(*answer)),
            READY,
        ),
    )


def test_binary_parameters_decoded_by_type() -> None:
    sql = "insert into t values ($1, $2, $3, $4, $5, $6, $7, $8)"
    key = uuid.UUID("12345678-1234-5678-1234-567812345678")
    values = [
        struct.pack("!i", -42),
        struct.pack("!q", 9_000_000_000),
        "héllo".encode(),
        b"\x01",
        b"\xde\xad\xbe\xef",
        None,
        key.bytes,
        b"\x00\x01",  # unknown type: hex
    ]
    play(
        *LOGIN,
        client(
            pg.parse("ins", sql, [INT4, INT8, TEXT, BOOL, BYTEA, TEXT, UUID, 0]),
            pg.bind("", "ins", values, formats=[1]),
            pg.execute(),
            pg.sync(),
        )(
            started(
                1,
                "execute",
                sql,
                "-42",
                "9000000000",
                "héllo",
                "t",
                "\\xdeadbeef",
                None,
                str(key),
                "\\x0001",
                statement="ins",
                portal="",
            )
        ),
    )


def test_mixed_text_and_binary_parameters() -> None:
    play(
        *LOGIN,
        client(
            pg.parse("", "select $1, $2", [INT4, INT4]),
            pg.bind("", "", [b"7", struct.pack("!i", 8)], formats=[0, 1]),
            pg.execute(),
        )(started(1, "execute", "select $1, $2", "7", "8", statement="", portal="")),
    )


def test_mismatched_format_count_renders_hex() -> None:
    # The server will refuse the Bind; the record still says exactly what was sent.
    play(
        *LOGIN,
        client(
            pg.parse("", "select $1, $2, $3", [INT4] * 3),
            pg.bind("", "", [b"1", b"2", b"3"], formats=[0, 1]),
            pg.execute(),
        )(
            started(
                1,
                "execute",
                "select $1, $2, $3",
                "\\x31",
                "\\x32",
                "\\x33",
                statement="",
                portal="",
            )
        ),
    )


def test_parameter_description_supplies_types_for_binary_values() -> None:
    # asyncpg's way: Parse without types, Describe the statement, then Bind binary values.
    sql = "select * from t where id = $1"
    play(
        *LOGIN,
        client(pg.parse("__p1", sql), pg.describe("S", "__p1"), pg.sync())(),
        server(
            pg.parse_complete(),
            pg.parameter_description(INT8),
            pg.row_description("id"),
            pg.ready_for_query(),
        )(READY),
        client(pg.bind("", "__p1", [struct.pack("!q", 5)], formats=[1]), pg.execute(), pg.sync())(
            started(1, "execute", sql, "5", statement="__p1", portal="")
        ),
    )


def test_named_portal_and_portal_suspended() -> None:
    sql = "select n from generate_series(1, 3) n"
    first = (pg.bind_complete(), pg.data_row(b"1"), pg.data_row(b"2"), pg.portal_suspended())
    rest = (pg.data_row(b"3"), pg.command_complete("SELECT 1"))
    play(
        *LOGIN,
        client(pg.query("begin"))(started(1, "query", "begin")),
        server(pg.command_complete("BEGIN"), pg.ready_for_query("T"))(
            finished(
                1,
                tags=["BEGIN"],
                bytes=pg.size(pg.command_complete("BEGIN"), pg.ready_for_query("T")),
            ),
            Ready("T"),
        ),
        client(
            pg.parse("", sql),
            pg.bind("cur", ""),
            pg.execute("cur", 2),
            pg.flush(),
        )(started(2, "execute", sql, statement="", portal="cur")),
        server(pg.parse_complete(), *first)(finished(2, "suspended", bytes=pg.size(*first))),
        client(pg.execute("cur", 2), pg.close("P", "cur"), pg.sync())(
            started(3, "execute", sql, statement="", portal="cur")
        ),
        server(*rest, pg.close_complete(), pg.ready_for_query("T"))(
            finished(3, tags=["SELECT 1"], rows=1, bytes=pg.size(*rest)), Ready("T")
        ),
        client(pg.execute("cur"), pg.sync())(
            unknown(
                4, Prepared("cur", None, doubt="unseen", changed_by=3, kind="portal"), portal="cur"
            )
        ),
    )


def test_unknown_statement_and_portal_are_recorded_as_far_as_known() -> None:
    missing = ErrorInfo("ERROR", "26000", 'prepared statement "nope" does not exist')
    play(
        *LOGIN,
        client(pg.bind("", "nope", [b"1"]), pg.execute(), pg.sync())(
            unknown(1, Prepared("nope", None, doubt="unseen"), "1", statement="nope", portal="")
        ),
        server(_error(missing), pg.ready_for_query())(
            finished(1, "error", error=missing, bytes=pg.size(_error(missing))), READY
        ),
        client(pg.execute("p9"), pg.sync())(
            unknown(
                2, Prepared("p9", None, doubt="unseen", changed_by=1, kind="portal"), portal="p9"
            )
        ),
    )


INSERTED = Prepared("ins", "insert into t values ($1)", "parsed", 0, "changed", 1)


def test_error_in_a_pipeline_skips_the_rest_until_sync() -> None:
    boom = ErrorInfo("ERROR", "23505", "duplicate key value violates unique constraint")
    ok = (pg.bind_complete(), pg.command_complete("INSERT 0 1"))
    play(
        *LOGIN,
        client(
            pg.parse("ins", "insert into t values ($1)"),
            *(m for v in (b"1", b"1", b"2") for m in (pg.bind("", "ins", [v]), pg.execute())),
            pg.sync(),
            pg.bind("", "ins", [b"3"]),
            pg.execute(),
            pg.sync(),
        )(
            started(1, "execute", "insert into t values ($1)", "1", statement="ins", portal=""),
            *(
                unknown(n, INSERTED, v, statement="ins", portal="")
                for n, v in ((2, "1"), (3, "2"), (4, "3"))
            ),
        ),
        server(pg.parse_complete(), *ok, pg.bind_complete(), _error(boom), pg.ready_for_query())(
            finished(1, tags=["INSERT 0 1"], rows=1, bytes=pg.size(*ok)),
            finished(2, "error", error=boom, bytes=pg.size(pg.bind_complete(), _error(boom))),
            finished(3, "skipped"),
            READY,
        ),
        server(*ok, pg.ready_for_query())(
            finished(4, tags=["INSERT 0 1"], rows=1, bytes=pg.size(*ok)), READY
        ),
    )


def test_failed_parse_followed_only_by_sync_is_a_session_error() -> None:
    play(
        *LOGIN,
        client(pg.parse("", "selec 1"), pg.sync())(),
        server(_error(SYNTAX), pg.ready_for_query())(SessionError(SYNTAX), READY),
    )


def test_failed_parse_gives_its_error_to_the_execute_that_follows() -> None:
    play(
        *LOGIN,
        client(pg.parse("", "selec 1"), pg.bind("", ""), pg.execute(), pg.execute(), pg.sync())(
            started(1, "execute", "selec 1", statement="", portal=""),
            started(2, "execute", "selec 1", statement="", portal=""),
        ),
        server(_error(SYNTAX), pg.ready_for_query())(
            finished(1, "error", error=SYNTAX, bytes=pg.size(_error(SYNTAX))),
            finished(2, "skipped"),
            READY,
        ),
    )


def test_failed_describe_then_query_before_sync_skips_the_query() -> None:
    missing = ErrorInfo("ERROR", "26000", 'prepared statement "x" does not exist')
    play(
        *LOGIN,
        client(pg.describe("S", "x"), pg.query("select 1"), pg.sync())(
            started(1, "query", "select 1")
        ),
        server(_error(missing), pg.ready_for_query())(
            SessionError(missing), finished(1, "skipped"), READY
        ),
    )


def test_close_statement_forgets_it() -> None:
    play(
        *LOGIN,
        client(pg.parse("s1", "select 1"), pg.close("S", "s1"), pg.sync())(),
        server(pg.parse_complete(), pg.close_complete(), pg.ready_for_query())(READY),
        client(pg.bind("", "s1"), pg.execute(), pg.sync())(
            unknown(1, Prepared("s1", None, doubt="unseen"), statement="s1", portal="")
        ),
    )


def test_simple_query_drops_the_unnamed_statement() -> None:
    done = (pg.command_complete("SELECT 1"), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.parse("", "select 1"), pg.sync())(),
        server(pg.parse_complete(), pg.ready_for_query())(READY),
        client(pg.query("select 2"))(started(1, "query", "select 2")),
        server(*done)(finished(1, tags=["SELECT 1"], rows=1, bytes=pg.size(*done)), READY),
        client(pg.bind("", ""), pg.execute(), pg.sync())(
            unknown(2, Prepared("", None, doubt="unseen"), statement="", portal="")
        ),
    )


# --- a statement's name must always lead to the text the server will run ------------------


def _login_with(name: str, sql: str) -> tuple[Step, ...]:
    return (
        *LOGIN,
        client(pg.parse(name, sql), pg.sync())(),
        server(pg.parse_complete(), pg.ready_for_query())(READY),
    )


def test_redefining_a_named_statement_keeps_the_text_the_server_keeps() -> None:
    taken = ErrorInfo("42P05", "42P05", 'prepared statement "s1" already exists')
    play(
        *_login_with("s1", "drop table accounts"),
        client(pg.parse("s1", "select 1"), pg.sync())(),
        server(_error(taken), pg.ready_for_query())(SessionError(taken), READY),
        client(pg.bind("", "s1"), pg.execute(), pg.sync())(
            started(1, "execute", "drop table accounts", statement="s1", portal="")
        ),
    )


def test_a_failed_parse_leaves_the_name_free() -> None:
    play(
        *LOGIN,
        client(pg.parse("s1", "selec 1"), pg.sync())(),
        server(_error(SYNTAX), pg.ready_for_query())(SessionError(SYNTAX), READY),
        client(pg.parse("s1", "drop table accounts"), pg.bind("", "s1"), pg.execute(), pg.sync())(
            started(1, "execute", "drop table accounts", statement="s1", portal="")
        ),
    )


def test_sql_deallocate_frees_the_name() -> None:
    done = (pg.command_complete("DEALLOCATE"), pg.ready_for_query())
    play(
        *_login_with("s1", "select 1"),
        client(pg.query('DEALLOCATE "s1";'))(started(1, "query", 'DEALLOCATE "s1";')),
        server(*done)(finished(1, tags=["DEALLOCATE"], bytes=pg.size(*done)), READY),
        client(pg.parse("s1", "drop table accounts"), pg.bind("", "s1"), pg.execute(), pg.sync())(
            started(2, "execute", "drop table accounts", statement="s1", portal="")
        ),
    )


def test_an_unreadable_query_makes_every_named_text_unknown() -> None:
    # A backslash in a string: whether it escapes the quote depends on settings Witness does
    # not follow, so where this query's statements end is unknown; it may run anything.
    text = "deallocate s1; select 'a\\'"
    done = (pg.command_complete("DEALLOCATE"), pg.ready_for_query())
    play(
        *_login_with("s1", "select 1"),
        client(pg.query(text))(started(1, "query", text)),
        server(*done)(finished(1, tags=["DEALLOCATE"], bytes=pg.size(*done)), READY),
        client(pg.bind("", "s1"), pg.execute(), pg.sync())(
            unknown(
                2, Prepared("s1", "select 1", "parsed", 0, "changed", 1), statement="s1", portal=""
            )
        ),
    )


def test_a_reused_name_means_the_new_text_within_its_own_pipeline() -> None:
    # If the Parse fails, the server skips the rest up to Sync; if not, the new text runs.
    play(
        *_login_with("s1", "select 1"),
        client(pg.parse("s1", "drop table accounts"), pg.bind("", "s1"), pg.execute(), pg.sync())(
            started(1, "execute", "drop table accounts", statement="s1", portal="")
        ),
    )


def test_a_reused_name_is_unconfirmed_beyond_its_pipeline_until_answered() -> None:
    # Either text could run: the record says so rather than guess.
    doubt = Prepared("s1", "drop table accounts", "parsed", 0, "unconfirmed")
    play(
        *_login_with("s1", "select 1"),
        client(pg.parse("s1", "drop table accounts"), pg.sync())(),
        client(pg.bind("", "s1"), pg.execute(), pg.sync())(
            unknown(1, doubt, statement="s1", portal="")
        ),
    )


def test_a_reused_name_is_settled_by_the_answer() -> None:
    taken = ErrorInfo("ERROR", "42P05", 'prepared statement "s1" already exists')
    reuse = client(pg.parse("s1", "select 2"), pg.sync())()
    play(
        *_login_with("s1", "select 1"),
        reuse,
        server(_error(taken), pg.ready_for_query())(SessionError(taken), READY),
        client(pg.bind("", "s1"), pg.execute())(
            started(1, "execute", "select 1", statement="s1", portal="")
        ),
    )
    play(
        *_login_with("s1", "select 1"),
        reuse,
        server(pg.parse_complete(), pg.ready_for_query())(READY),  # some SQL had freed it
        client(pg.bind("", "s1"), pg.execute())(
            started(1, "execute", "select 2", statement="s1", portal="")
        ),
    )


def test_sql_prepare_gives_a_bind_its_text() -> None:
    text = "PREPARE wipe (int) AS delete from t where id = $1"
    done = (pg.command_complete("PREPARE"), pg.ready_for_query())
    play(
        *LOGIN,
        client(pg.query(text))(started(1, "query", text)),
        server(*done)(finished(1, tags=["PREPARE"], bytes=pg.size(*done)), READY),
        client(pg.bind("", "wipe", [b"1"]), pg.execute(), pg.sync())(
            started(2, "execute", "delete from t where id = $1", "1", statement="wipe", portal="")
        ),
    )


def test_after_code_every_new_name_is_contested() -> None:
    # The DO block may have prepared "b" itself: the Parse below then fails, and its
    # statement runs instead, unless the answer says the Parse took.
    text = "do $$ begin execute 'prepare b as delete from t'; end $$"
    done = (pg.command_complete("DO"), pg.ready_for_query())
    doubt = Prepared("b", "select 3", "parsed", 1, "unconfirmed")
    play(
        *LOGIN,
        client(pg.query(text))(started(1, "query", text)),
        server(*done)(finished(1, tags=["DO"], bytes=pg.size(*done)), READY),
        client(pg.parse("b", "select 3"), pg.sync())(),
        client(pg.bind("", "b"), pg.execute(), pg.sync())(
            unknown(2, doubt, statement="b", portal="")
        ),
    )


def test_discard_all_forgets_named_statements() -> None:
    done = (pg.command_complete("DISCARD ALL"), pg.ready_for_query())
    play(
        *_login_with("s1", "select 1"),
        client(pg.query("discard all"))(started(1, "query", "discard all")),
        server(*done)(finished(1, tags=["DISCARD ALL"], bytes=pg.size(*done)), READY),
        client(pg.bind("", "s1"), pg.execute())(
            unknown(
                2, Prepared("s1", None, doubt="unseen", changed_by=1), statement="s1", portal=""
            )
        ),
    )


# --- COPY in the extended protocol ---------------------------------------------------------------


def test_extended_copy_in_ignores_the_sync_sent_with_it() -> None:
    # libpq sends P/B/D/E/S at once; the server ignores that Sync in copy-in mode, and
    # libpq sends a second one after CopyDone.
    sql = "copy t from stdin"
    answer = (pg.bind_complete(), pg.no_data(), pg.copy_in_response(1))
    done = (pg.command_complete("COPY 2"),)
    play(
        *LOGIN,
        client(pg.parse("", sql), pg.bind("", ""), pg.describe("P"), pg.execute(), pg.sync())(
            started(1, "execute", sql, statement="", portal="")
        ),
        server(pg.parse_complete(), *answer)(),
        client(pg.copy_data(b"1\n"), pg.copy_data(b"2\n"), pg.copy_done(), pg.sync())(),
        server(*done, pg.ready_for_query())(
            finished(1, tags=["COPY 2"], rows=2, copy_bytes=4, bytes=pg.size(*answer, *done)),
            READY,
        ),
        client(pg.query("select 1"))(started(2, "query", "select 1")),
        server(pg.command_complete("SELECT 1"), pg.ready_for_query())(
            finished(
                2,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(pg.command_complete("SELECT 1"), pg.ready_for_query()),
            ),
            READY,
        ),
    )


def test_extended_copy_out() -> None:
    sql = "copy t to stdout"
    answer = (
        pg.bind_complete(),
        pg.copy_out_response(1),
        pg.copy_data(b"1\n"),
        pg.copy_done(),
        pg.command_complete("COPY 1"),
    )
    play(
        *LOGIN,
        client(pg.parse("", sql), pg.bind("", ""), pg.execute(), pg.sync())(
            started(1, "execute", sql, statement="", portal="")
        ),
        server(pg.parse_complete(), *answer, pg.ready_for_query())(
            finished(1, tags=["COPY 1"], rows=1, copy_bytes=2, bytes=pg.size(*answer)), READY
        ),
    )


def test_capture_uses_bind_result_formats_without_describe() -> None:
    answer = (
        pg.bind_complete(),
        pg.data_row(b"\x00\x00\x00\x07", b"x"),
        pg.command_complete("SELECT 1"),
    )
    play(
        *LOGIN,
        client(
            pg.parse("", "select 7, 'x'"),
            pg.bind("", "", result_formats=[1, 0]),
            pg.execute(),
            pg.sync(),
        )(started(1, "execute", "select 7, 'x'", statement="", portal="")),
        server(pg.parse_complete(), *answer, pg.ready_for_query())(
            finished(
                1,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(*answer),
                captured=[["\\x00000007", "x"]],
            ),
            READY,
        ),
        capture_rows=5,
    )


def test_capture_ignores_a_statement_description() -> None:
    answer = (
        pg.bind_complete(),
        pg.row_description("b"),
        pg.data_row(b"2"),
        pg.command_complete("SELECT 1"),
    )
    play(
        *LOGIN,
        client(
            pg.parse("", "select 2 b"),
            pg.describe("S"),
            pg.bind("", ""),
            pg.describe("P"),
            pg.execute(),
            pg.sync(),
        )(started(1, "execute", "select 2 b", statement="", portal="")),
        server(
            pg.parse_complete(),
            pg.parameter_description(),
            pg.row_description("a"),
            *answer,
            pg.ready_for_query(),
        )(
            # The statement's RowDescription follows the ParameterDescription that answered
            # the Describe, so its bytes go to the command queued next.
            finished(
                1,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(pg.row_description("a"), *answer),
                columns=["b"],
                captured=[["2"]],
            ),
            READY,
        ),
        capture_rows=5,
    )


# --- answers that match no request -------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pg.command_complete("SELECT 1"),
        pg.parse_complete(),
        pg.close_complete(),
        pg.portal_suspended(),
        pg.parameter_description(),
        pg.copy_in_response(),
        pg.ready_for_query(),
    ],
)
def test_an_answer_nothing_asked_for_is_a_server_error(answer: bytes) -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    with pytest.raises(ProtocolError, match="arrived while no request awaited") as caught:
        conn.receive_server(answer)
    assert caught.value.side == "server"


def test_ready_before_an_execute_is_answered_is_a_server_error() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    conn.receive_client(pg.bind("", "") + pg.execute() + pg.sync())
    with pytest.raises(ProtocolError, match=r"command 1 \(execute\) awaited"):
        conn.receive_server(pg.ready_for_query())
