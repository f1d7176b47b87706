"""The protocol-neutral interface, as the PostgreSQL handler gives it: the events the relay
sees, fed whole, byte by byte and split inside messages; the refusals in the protocol's own
words; and a fuzz of both directions in which nothing but ProtocolError escapes."""

from __future__ import annotations

from collections.abc import Sequence

import pgwire as pg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from playbook import CHUNKINGS, Chunker

from appliance.config import Capture
from appliance.model import Command, Decision, ErrorInfo, Result
from appliance.policy.redact import Redactor
from appliance.protocols import handler as h
from appliance.protocols.errors import ProtocolError
from appliance.protocols.events import CommandFinished, CommandStarted
from appliance.protocols.postgres.handler import SQLSTATE, PostgresHandler
from appliance.protocols.registry import handler_for

chunkings = pytest.mark.parametrize("chunker", CHUNKINGS.values(), ids=CHUNKINGS.keys())


def fresh() -> PostgresHandler:
    return PostgresHandler(
        capture_rows=0, capture_bytes=0, max_message=1 << 20, redactor=Redactor()
    )


def feed(handler: PostgresHandler, side: str, messages: Sequence[bytes], chunker: Chunker) -> list:
    receive = handler.receive_client if side == ">" else handler.receive_server
    out: list = []
    for chunk in chunker(messages):
        out += receive(chunk)
    return out


@chunkings
def test_a_session_in_the_relays_words(chunker: Chunker) -> None:
    handler = fresh()
    client = feed(
        handler, ">", [pg.ssl_request(), pg.startup(user="app", database="shop")], chunker
    )
    assert client == [
        h.Reply(b"N", "ssl"),
        h.Opened("app", "shop", {"user": "app", "database": "shop"}),
    ]
    server = feed(
        handler,
        "<",
        [pg.auth_ok(), pg.backend_key_data(41, 99), pg.ready_for_query("I")],
        chunker,
    )
    assert server == [h.CancelKey((41, 99), 41), h.Ready("I")]
    started = feed(handler, ">", [pg.query("select 1")], chunker)
    assert [type(e) for e in started] == [CommandStarted]
    answer = [pg.command_complete("SELECT 1"), pg.ready_for_query("I")]
    finished = feed(handler, "<", answer, chunker)
    assert [type(e) for e in finished] == [CommandFinished, h.Ready]
    assert feed(handler, ">", [pg.terminate()], chunker) == [h.Closed()]


@chunkings
def test_a_user_alone_names_the_database_as_postgresql_does(chunker: Chunker) -> None:
    [opened] = feed(fresh(), ">", [pg.startup(user="app")], chunker)
    assert opened == h.Opened("app", "app", {"user": "app"})


@chunkings
def test_a_cancel_request_is_one_opaque_key(chunker: Chunker) -> None:
    [cancel] = feed(fresh(), ">", [pg.cancel_request(41, 99)], chunker)
    assert cancel == h.Cancel((41, 99), "cancel backend pid 41", pg.cancel_request(41, 99))


@chunkings
def test_an_error_of_no_command_is_failed(chunker: Chunker) -> None:
    handler = fresh()
    feed(handler, ">", [pg.startup(user="app")], chunker)
    bad = pg.error_response("password authentication failed", "28P01", "FATAL")
    [failed] = feed(handler, "<", [bad], chunker)
    assert failed == h.Failed(ErrorInfo("FATAL", "28P01", "password authentication failed"))


def test_every_reason_is_said_in_postgresqls_words() -> None:
    handler = fresh()
    assert set(SQLSTATE) == set(h.REASONS)
    for why in h.REASONS:
        told = handler.refusal(why, "witness: no")
        assert told.code == SQLSTATE[why]
        assert told.data == pg.error_response("witness: no", told.code, "FATAL")


def test_the_factory_picks_by_protocol_and_refuses_one_not_built() -> None:
    made = handler_for("postgresql", Capture(), 1 << 20, Redactor(), certain=False)
    assert isinstance(made, PostgresHandler)
    with pytest.raises(ValueError, match="'mysql'"):
        handler_for("mysql", Capture(), 1 << 20, Redactor(), certain=False)


def test_the_records_keep_no_secret() -> None:
    handler = fresh()
    command = Command("query", "ALTER ROLE bob PASSWORD 'hunter2-long'")
    record = handler.command_record(3, command)
    assert "hunter2-long" not in repr(record) and record["redacted"] is True
    result = Result("error", error=ErrorInfo("ERROR", "42601", 'near "hunter2-long"'))
    assert "hunter2-long" not in repr(handler.result_record(3, result))
    stray = ErrorInfo("ERROR", "42601", 'syntax error at or near "hunter2-long"')
    assert "hunter2-long" not in repr(handler.error_record(stray))
    plain = handler.command_record(4, Command("query", "select 1"))
    assert plain == {"kind": "query", "text": "select 1", "n": 4}


_MESSAGES = st.sampled_from(
    [pg.query("select 1"), pg.query("delete from t"), pg.parse("s", "select $1"),
     pg.bind("", "s", [b"1"]), pg.execute(""), pg.sync(), pg.flush(), pg.describe("P"),
     pg.close("S", "s"), pg.terminate(), pg.copy_data(b"x"), pg.copy_done()]
)  # fmt: skip
_ANSWERS = st.sampled_from(
    [pg.command_complete("SELECT 1"), pg.ready_for_query("I"), pg.parse_complete(),
     pg.bind_complete(), pg.error_response("x"), pg.data_row(b"1"), pg.close_complete(),
     pg.row_description("a"), pg.no_data(), pg.copy_in_response()]
)  # fmt: skip
_NOISE = st.binary(max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("><"), st.one_of(_MESSAGES, _ANSWERS, _NOISE)),
             max_size=30),
    st.booleans(),
    st.integers(1, 17),
)  # fmt: skip
def test_nothing_but_the_protocol_error_escapes(
    steps: list[tuple[str, bytes]], refresh: bool, cut: int
) -> None:
    handler = PostgresHandler(
        capture_rows=2, capture_bytes=64, max_message=4096, redactor=Redactor(), refresh=refresh
    )
    login = [pg.startup(user="app"), pg.auth_ok(), pg.ready_for_query("I")]
    handler.receive_client(login[0])
    handler.client_payload(login[0])
    handler.receive_server(login[1] + login[2])
    block = Decision("block", "r", "no")
    try:
        for side, data in steps:
            for at in range(0, len(data), cut):
                chunk = data[at : at + cut]
                if side == ">":
                    for event in handler.receive_client(chunk):
                        if isinstance(event, CommandStarted) and "delete" in event.command.text:
                            handler.block(event.n, block)
                    handler.client_payload(chunk)
                else:
                    handler.receive_server(chunk)
                    handler.server_payload(chunk)
    except ProtocolError:
        pass
    handler.close()


@pytest.mark.parametrize(
    ("params", "moved"),
    [
        ({"user": "app"}, ()),
        ({"user": "app", "options": "-c search_path=evil,pg_catalog"}, ("search_path",)),
        ({"user": "app", "options": "--SEARCH_PATH=evil"}, ("search_path",)),
        ({"user": "app", "search_path": "evil"}, ("search_path",)),
        ({"user": "app", "options": "-c statement_timeout=5"}, ()),
    ],
)
def test_a_search_path_set_at_connect_time_is_told(params: dict[str, str], moved: tuple) -> None:
    [opened] = fresh().receive_client(pg.startup(**params))
    assert isinstance(opened, h.Opened) and opened.moved == moved


def test_a_text_too_long_to_search_for_secrets_is_not_recorded() -> None:
    handler = fresh()
    text = "select 'password', " + "1, " * 100_000 + "1"
    record = handler.command_record(1, Command("query", text))
    assert "password" not in record["text"] and record["redacted"] is True
