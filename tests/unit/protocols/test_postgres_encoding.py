"""Client encodings: every text read as the server reads it, and said so when it cannot be."""

from __future__ import annotations

import pgwire as pg
import pytest
from playbook import READY, Step, client, finished, play, server, started

from appliance.model import Command, Decoding, ErrorInfo, Prepared, Reading
from appliance.protocols.postgres.encodings import ENCODINGS, codec
from appliance.protocols.postgres.events import BackendKey, CommandStarted, Startup

# Two INSERTs. In SJIS, 0x5C after the lead byte 0x83 is the second byte of ソ; read as
# UTF-8 (the bytes are not valid UTF-8), a backslash would escape the quote after it and
# make one string literal of everything up to the next quote.
SJIS_TEXT = "insert into t values (E'ソ'); insert into t values ('x')"
SJIS = SJIS_TEXT.encode("cp932")


def _login(encoding: str) -> tuple[Step, ...]:
    welcome = (
        pg.auth_ok(),
        pg.parameter_status("client_encoding", encoding),
        pg.parameter_status("server_encoding", "UTF8"),
        pg.backend_key_data(4242, 99),
        pg.ready_for_query("I"),
    )
    return (
        client(pg.startup(user="alice", client_encoding=encoding))(
            Startup((3, 0), {"user": "alice", "client_encoding": encoding})
        ),
        server(*welcome)(BackendKey(4242, 99), READY),
    )


def _raw_query(raw: bytes) -> bytes:
    return pg.message(b"Q", raw + b"\0")


def _raw_parse(name: str, raw: bytes) -> bytes:
    return pg.message(b"P", pg.cstr(name) + raw + b"\0" + b"\0\0")


def test_sjis_query_text_is_read_as_the_server_reads_it() -> None:
    assert b"\x83\x5c" in SJIS
    play(*_login("SJIS"), client(_raw_query(SJIS))(started(1, "query", SJIS_TEXT)))


@pytest.mark.parametrize(
    ("encoding", "raw", "text"),
    [
        # 0xA1C1: Python's euc_jp says U+301C, the server U+FF5E (a fullwidth tilde).
        ("EUC_JP", "select 'ｿ表', '".encode("euc_jp") + b"\xa1\xc1'", "select 'ｿ表', '\uff5e'"),
        ("BIG5", "select '許功蓋'".encode("big5"), "select '許功蓋'"),
        ("UHC", "select '한국어'".encode("cp949"), "select '한국어'"),
        ("GB18030", "select '中文𠀀'".encode("gb18030"), "select '中文𠀀'"),
        ("WIN1251", "select 'Привет'".encode("cp1251"), "select 'Привет'"),
        ("LATIN1", "select 'café'".encode("latin_1"), "select 'café'"),
        # 0x5C is a backslash to the server; Python's shift_jis_2004 reads a yen sign.
        ("SHIFT_JIS_2004", b"select E'\\\\', '\x83\x5c'", "select E'\\\\', 'ソ'"),
    ],
)
def test_other_encodings(encoding: str, raw: bytes, text: str) -> None:
    play(*_login(encoding), client(_raw_query(raw))(started(1, "query", text)))


def test_what_python_cannot_decode_is_kept_as_bytes() -> None:
    # EUC_JP's row 13 (NEC's circled numbers): the server reads it, Python's euc_jp does not.
    raw = "select '".encode("euc_jp") + b"\xad\xa1'"
    play(
        *_login("EUC_JP"),
        client(_raw_query(raw))(
            CommandStarted(
                1, Command("query", "\\x" + raw.hex(), decoding=Decoding("EUC_JP", raw=True))
            )
        ),
    )


def test_an_encoding_with_no_codec_keeps_the_bytes_and_names_the_encoding() -> None:
    raw = b"select '\x8e\xa2\xa1\xa1'"  # EUC_TW's four-byte plane 2
    play(
        *_login("EUC_TW"),
        client(_raw_query(raw))(
            CommandStarted(
                1, Command("query", "\\x" + raw.hex(), decoding=Decoding("EUC_TW", raw=True))
            )
        ),
        client(pg.query("select 1"))(started(2, "query", "select 1")),  # ASCII reads anyway
    )


def test_bytes_invalid_in_the_encoding_are_kept_not_replaced() -> None:
    raw = b"select '\xff\xfe'"
    play(
        *_login("UTF8"),
        client(_raw_query(raw))(
            CommandStarted(
                1, Command("query", "\\x" + raw.hex(), decoding=Decoding("UTF8", raw=True))
            )
        ),
    )


def test_parse_text_parameters_names_rows_and_errors_in_sjis() -> None:
    sql = "select $1::text as ソ"
    value = "ソ表"
    boom = ErrorInfo("ERROR", "22P02", "表が壊れた")
    answer = (
        pg.bind_complete(),
        pg.message(b"T", pg.row_description("x")[5:].replace(b"x\0", "ソ".encode("cp932") + b"\0")),
        pg.data_row(value.encode("cp932")),
        pg.command_complete("SELECT 1"),
    )
    error = pg.message(
        b"E",
        b"SERROR\0VERROR\0C22P02\0M" + boom.message.encode("cp932") + b"\0\0",
    )
    name = "文"
    raw_name = name.encode("cp932")
    play(
        *_login("SJIS"),
        client(
            pg.message(b"P", raw_name + b"\0" + sql.encode("cp932") + b"\0" + b"\0\0"),
            pg.message(
                b"B",
                b"\0"
                + raw_name
                + b"\0"
                + b"\0\0"
                + b"\0\x01"
                + len(value.encode("cp932")).to_bytes(4, "big")
                + value.encode("cp932")
                + b"\0\0",
            ),
            pg.execute(),
            pg.sync(),
        )(started(1, "execute", sql, value, statement=name, portal="")),
        server(pg.parse_complete(), *answer, pg.ready_for_query())(
            finished(
                1,
                tags=["SELECT 1"],
                rows=1,
                bytes=pg.size(*answer),
                columns=["ソ"],
                captured=[[value]],
            ),
            READY,
        ),
        client(pg.query("select x"))(started(2, "query", "select x")),
        server(error, pg.ready_for_query())(
            finished(2, "error", error=boom, bytes=pg.size(error, pg.ready_for_query())), READY
        ),
        capture_rows=5,
    )


def test_a_reported_change_applies_from_the_next_query() -> None:
    change = "set client_encoding to 'SJIS'"
    answer = (
        pg.command_complete("SET"),
        pg.parameter_status("client_encoding", "SJIS"),
        pg.ready_for_query(),
    )
    play(
        *_login("UTF8"),
        client(pg.query(change))(started(1, "query", change)),
        server(*answer)(finished(1, tags=["SET"], bytes=pg.size(*answer)), READY),
        client(_raw_query(SJIS))(started(2, "query", SJIS_TEXT)),
    )


def test_a_query_sent_before_a_change_is_reported_is_unsure_then_corrected() -> None:
    # Both queries go out before any answer: the second was decoded as UTF-8 (its bytes are
    # not valid there, so they are kept), and the answer to the first says SJIS.
    change = "set client_encoding to 'SJIS'"
    first = (
        pg.command_complete("SET"),
        pg.parameter_status("client_encoding", "SJIS"),
        pg.ready_for_query(),
    )
    second = (pg.command_complete("INSERT 0 1"), pg.command_complete("INSERT 0 1"))
    guess = Command("query", "\\x" + SJIS.hex(), decoding=Decoding("UTF8", True, 1))
    play(
        *_login("UTF8"),
        client(pg.query(change), _raw_query(SJIS))(
            started(1, "query", change), CommandStarted(2, guess)
        ),
        server(*first)(finished(1, tags=["SET"], bytes=pg.size(*first)), READY),
        server(*second, pg.ready_for_query())(
            finished(
                2,
                tags=["INSERT 0 1", "INSERT 0 1"],
                rows=2,
                bytes=pg.size(*second, pg.ready_for_query()),
                reading=Reading("SJIS", SJIS_TEXT),
            ),
            READY,
        ),
    )


def test_a_change_inside_the_same_pipeline_stays_unsure() -> None:
    # The SET and the INSERT share a pipeline: the server may switch, and even switch back,
    # between them, and reports only where it ended. Nothing settles it.
    change = "set client_encoding to 'SJIS'"
    insert = "insert into t values ('ソ')"
    raw = insert.encode("cp932")
    sent = Command(
        "execute",
        "\\x" + raw.hex(),
        statement="",
        portal="",
        decoding=Decoding("UTF8", True, 1),
    )
    answer = (
        pg.parse_complete(),
        pg.bind_complete(),
        pg.command_complete("SET"),
        pg.parse_complete(),
        pg.bind_complete(),
        pg.command_complete("INSERT 0 1"),
    )
    play(
        *_login("UTF8"),
        client(
            pg.parse("", change),
            pg.bind("", ""),
            pg.execute(),
            _raw_parse("", raw),
            pg.bind("", ""),
            pg.execute(),
            pg.sync(),
        )(started(1, "execute", change, statement="", portal=""), CommandStarted(2, sent)),
        server(*answer, pg.parameter_status("client_encoding", "SJIS"), pg.ready_for_query())(
            finished(1, tags=["SET"], bytes=pg.size(*answer[1:3])),
            finished(2, tags=["INSERT 0 1"], rows=1, bytes=pg.size(*answer[4:])),
            READY,
        ),
    )
    assert not sent.text_known


def test_ascii_is_sure_whatever_the_encoding() -> None:
    change = "set client_encoding to 'SJIS'"
    play(
        *_login("UTF8"),
        client(pg.query(change), pg.query("select 1"))(
            started(1, "query", change), started(2, "query", "select 1")
        ),
    )


def test_a_query_sent_during_the_login_waits_for_its_report() -> None:
    welcome = (
        pg.auth_ok(),
        pg.parameter_status("client_encoding", "SJIS"),
        pg.backend_key_data(4242, 99),
        pg.ready_for_query("I"),
    )
    answer = (pg.command_complete("INSERT 0 1"), pg.command_complete("INSERT 0 1"))
    guess = Command("query", "\\x" + SJIS.hex(), decoding=Decoding("UTF8", True, 0))
    play(
        client(pg.startup(user="alice", client_encoding="SJIS"), _raw_query(SJIS))(
            Startup((3, 0), {"user": "alice", "client_encoding": "SJIS"}),
            CommandStarted(1, guess),
        ),
        server(*welcome)(BackendKey(4242, 99), READY),
        server(*answer, pg.ready_for_query())(
            finished(
                1,
                tags=["INSERT 0 1", "INSERT 0 1"],
                rows=2,
                bytes=pg.size(*answer, pg.ready_for_query()),
                reading=Reading("SJIS", SJIS_TEXT),
            ),
            READY,
        ),
    )


def test_an_unsure_text_is_not_read_for_prepared_statements() -> None:
    # Where the statements of an unsure text end is unknown, so it may define any name.
    change = "set client_encoding to 'SJIS'"
    prepare = "prepare s1 as select 'ソ'".encode("cp932")
    play(
        *_login("UTF8"),
        client(pg.query(change), _raw_query(prepare), pg.bind("", "s1"), pg.execute(), pg.sync())(
            started(1, "query", change),
            CommandStarted(
                2, Command("query", "\\x" + prepare.hex(), decoding=Decoding("UTF8", True, 1))
            ),
            CommandStarted(
                3,
                Command(
                    "execute",
                    Prepared("s1", None, doubt="unseen", changed_by=2).describe(),
                    statement="s1",
                    portal="",
                    prepared=(Prepared("s1", None, doubt="unseen", changed_by=2),),
                ),
            ),
        ),
    )


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_encoding_reads_ascii(encoding: str) -> None:
    assert codec(encoding).show(b"select 'a\\b' -- ~") == "select 'a\\b' -- ~"


def test_sql_ascii_reads_in_the_server_encoding() -> None:
    assert codec("SQL_ASCII", "LATIN1").show(b"caf\xe9") == "café"
    assert codec("SQL_ASCII", "SQL_ASCII").show(b"caf\xe9") == "\\x636166e9"


def _named(name: bytes, text: str) -> bytes:
    return pg.message(b"P", name + b"\0" + text.encode() + b"\0\0\0")


def test_a_name_read_in_a_guessed_encoding_may_be_another_name() -> None:
    # C3 A9 is "é" in UTF-8 and "ﾃｩ" in SJIS: after the change, the backend binds the
    # statement named "ﾃｩ", which deletes.
    e_acute, katakana = "é".encode(), "ﾃｩ".encode()
    bind = pg.message(b"B", b"\0" + e_acute + b"\0" + b"\0\0\0\0\0\0")
    doubt = Prepared("é", "select 1", "parsed", 0, "name", 1)
    play(
        *_login("UTF8"),
        client(_named(e_acute, "select 1"), _named(katakana, "delete from t"), pg.sync())(),
        server(pg.parse_complete(), pg.parse_complete(), pg.ready_for_query())(READY),
        client(pg.query("set client_encoding to 'SJIS'"), bind, pg.execute(), pg.sync())(
            started(1, "query", "set client_encoding to 'SJIS'"),
            CommandStarted(
                2,
                Command("execute", doubt.describe(), statement="é", portal="", prepared=(doubt,)),
            ),
        ),
    )
