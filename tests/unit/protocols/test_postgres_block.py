"""Blocking one command: the server gets a statement its grammar refuses in its place, and
the error it answers with reaches the client as the block. Every test feeds the same bytes
whole, byte by byte and split inside messages, and checks the bytes each side is handed."""

from __future__ import annotations

from collections.abc import Sequence

import pgwire as pg
import pytest
from playbook import CHUNKINGS, Chunker

from appliance.model import Decision
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import CommandFinished, CommandStarted, Event
from appliance.protocols.postgres.messages import BLOCKED, BLOCKED_STATEMENT, error_response

RULE = Decision("block", "no-delete", "agents may not delete")
TOLD = error_response(
    "ERROR", "42501", "witness: blocked by rule 'no-delete': agents may not delete"
)
SYNTAX = pg.error_response('syntax error at or near "WITNESS"')

LOGIN_IN = [pg.startup(user="app", database="app")]
LOGIN_OUT = [pg.auth_ok(), pg.backend_key_data(7, 8), pg.ready_for_query("I")]


class Ends:
    """Both ends of one connection as the relay drives it: what each side is handed."""

    def __init__(self, chunker: Chunker, blocks: Sequence[str] = ("delete",)) -> None:
        self.conn = PostgresConnection()
        self.chunker = chunker
        self.blocks: Sequence[str] = blocks
        self.to_server = b""
        self.to_client = b""
        self.events: list[Event] = []
        self.client(LOGIN_IN)
        self.server(LOGIN_OUT)
        self.to_server = self.to_client = b""

    def client(self, messages: Sequence[bytes]) -> None:
        for chunk in self.chunker(messages):
            events = self.conn.receive_client(chunk)
            for event in events:
                if isinstance(event, CommandStarted) and any(
                    word in event.command.text.lower() for word in self.blocks
                ):
                    self.conn.block(event.n, RULE)
            self.events += events
            self.to_server += self.conn.client_payload(chunk)

    def server(self, messages: Sequence[bytes]) -> None:
        for chunk in self.chunker(messages):
            if self.conn.rewriting:
                self.events += self.conn.receive_server(chunk)
                self.to_client += self.conn.server_payload(chunk)
            else:
                self.to_client += chunk
                self.events += self.conn.receive_server(chunk)

    def results(self) -> dict[int, tuple[str, str | None]]:
        return {
            e.n: (e.result.status, None if e.result.error is None else e.result.error.code)
            for e in self.events
            if isinstance(e, CommandFinished)
        }


chunkings = pytest.mark.parametrize("chunker", CHUNKINGS.values(), ids=CHUNKINGS.keys())


@chunkings
def test_a_blocked_query_is_replaced_and_its_error_told_as_the_block(chunker: Chunker) -> None:
    ends = Ends(chunker)
    ends.client([pg.query("select 1"), pg.query("delete from t"), pg.query("select 2")])
    assert ends.to_server == pg.query("select 1") + pg.query(BLOCKED) + pg.query("select 2")
    one = [pg.row_description("a"), pg.data_row(b"1"), pg.command_complete("SELECT 1")]
    ends.server([*one, pg.ready_for_query("I"), SYNTAX, pg.ready_for_query("I")])
    assert ends.conn.rewriting is False
    ends.server([*one, pg.ready_for_query("I")])
    assert ends.to_client == b"".join(
        [*one, pg.ready_for_query("I"), TOLD, pg.ready_for_query("I"), *one]
    ) + pg.ready_for_query("I")
    assert ends.results() == {1: ("ok", None), 2: ("blocked", "42501"), 3: ("ok", None)}


@chunkings
def test_in_a_transaction_the_server_aborts_it_as_for_any_error(chunker: Chunker) -> None:
    ends = Ends(chunker)
    ends.client([pg.query("begin"), pg.query("delete from t")])
    ends.server([pg.command_complete("BEGIN"), pg.ready_for_query("T")])
    ends.server([SYNTAX, pg.ready_for_query("E")])
    assert ends.to_client.endswith(TOLD + pg.ready_for_query("E"))
    assert ends.results()[2] == ("blocked", "42501")


@chunkings
def test_an_execute_is_replaced_from_its_bind(chunker: Chunker) -> None:
    ends = Ends(chunker)
    batch = [
        pg.parse("", "delete from t where id = $1"),
        pg.bind("", "", [b"1"]),
        pg.describe("P"),
        pg.execute(""),
        pg.sync(),
    ]
    ends.client(batch)
    # The Parse goes (it runs nothing); from the Bind on, planning included, nothing does.
    assert ends.to_server == batch[0] + pg.parse(BLOCKED_STATEMENT, BLOCKED) + batch[4]
    ends.server([pg.parse_complete(), SYNTAX, pg.ready_for_query("I")])
    assert ends.to_client == pg.parse_complete() + TOLD + pg.ready_for_query("I")
    assert ends.results() == {1: ("blocked", "42501")}


@chunkings
def test_a_blocked_command_in_a_pipeline_skips_the_rest_to_sync(chunker: Chunker) -> None:
    ends = Ends(chunker)
    first = [pg.parse("", "select 1"), pg.bind("", ""), pg.execute("")]
    blocked = [pg.parse("s2", "delete from t"), pg.bind("", "s2"), pg.execute("")]
    after = [pg.parse("", "select 3"), pg.bind("", ""), pg.execute("")]
    ends.client([*first, *blocked, *after, pg.sync(), *first, pg.sync()])
    ends.server(
        [
            pg.parse_complete(),
            pg.bind_complete(),
            pg.data_row(b"1"),
            pg.command_complete("SELECT 1"),
            pg.parse_complete(),
            SYNTAX,
            pg.ready_for_query("I"),
            pg.parse_complete(),
            pg.bind_complete(),
            pg.data_row(b"1"),
            pg.command_complete("SELECT 1"),
            pg.ready_for_query("I"),
        ]
    )
    assert TOLD in ends.to_client and SYNTAX not in ends.to_client
    assert ends.results() == {
        1: ("ok", None),
        2: ("blocked", "42501"),
        3: ("skipped", None),
        4: ("ok", None),
    }


@chunkings
def test_a_block_skipped_by_an_earlier_error_is_not_told(chunker: Chunker) -> None:
    ends = Ends(chunker)
    first = [pg.parse("", "select x"), pg.bind("", ""), pg.execute("")]
    ends.client([*first, pg.parse("", "delete from t"), pg.bind("", ""), pg.execute(""), pg.sync()])
    failed = pg.error_response('column "x" does not exist', "42703")
    ends.server([failed, pg.ready_for_query("I")])
    assert ends.to_client == failed + pg.ready_for_query("I")  # as PostgreSQL: skipped
    assert ends.results() == {1: ("error", "42703"), 2: ("skipped", None)}
    assert ends.conn.rewriting is False


@chunkings
def test_a_fatal_answer_to_a_blocked_command_is_the_servers_own(chunker: Chunker) -> None:
    ends = Ends(chunker)
    ends.client([pg.query("delete from t")])
    shutdown = pg.error_response("terminating connection", "57P01", "FATAL")
    ends.server([shutdown])
    assert ends.to_client == shutdown


def test_a_function_call_is_blocked_like_a_query() -> None:
    ends = Ends(CHUNKINGS["whole"], blocks=("function",))
    ends.client([pg.function_call(1234, [b"x"])])
    assert ends.to_server == pg.query(BLOCKED)
    ends.server([SYNTAX, pg.ready_for_query("I")])
    assert ends.to_client == TOLD + pg.ready_for_query("I")


def test_the_start_of_an_unfinished_message_waits_until_it_is_whole() -> None:
    conn = PostgresConnection()
    conn.receive_client(LOGIN_IN[0])
    conn.client_payload(LOGIN_IN[0])
    message = pg.query("delete from t")
    conn.receive_client(message[:6])
    assert conn.client_payload(message[:6]) == b""
    events = conn.receive_client(message[6:])
    started = [e for e in events if isinstance(e, CommandStarted)]
    conn.block(started[0].n, RULE)
    assert conn.client_payload(message[6:]) == pg.query(BLOCKED)


def test_only_a_command_of_the_last_chunk_can_be_blocked() -> None:
    conn = PostgresConnection()
    with pytest.raises(ValueError, match="command 1"):
        conn.block(1, RULE)


class Refreshing(Ends):
    def __init__(self, chunker: Chunker) -> None:
        super().__init__(chunker, blocks=("delete",))
        fresh = PostgresConnection(refresh=True)
        for chunk in LOGIN_IN:
            fresh.receive_client(chunk)
            fresh.client_payload(chunk)
        for chunk in LOGIN_OUT:
            fresh.receive_server(chunk)
        self.conn = fresh

    def executed(self) -> list[tuple[str, bool]]:
        return [
            (e.command.text, e.command.text_known)
            for e in self.events
            if isinstance(e, CommandStarted)
        ]


SELECT_S1 = "select v from t where id = $1"


def _first_run(ends: Ends, statement: str = SELECT_S1) -> None:
    ends.client(
        [pg.parse("s1", statement, [23]), pg.bind("", "s1", [b"1"]), pg.execute(""), pg.sync()]
    )
    ends.server(
        [pg.parse_complete(), pg.bind_complete(), pg.data_row(b"a"),
         pg.command_complete("SELECT 1"), pg.ready_for_query("I")]
    )  # fmt: skip


@chunkings
def test_with_refresh_a_statement_code_may_have_changed_is_parsed_again(chunker: Chunker) -> None:
    ends = Refreshing(chunker)
    _first_run(ends)
    ends.to_server = ends.to_client = b""
    again = [pg.bind("", "s1", [b"2"]), pg.execute(""), pg.sync()]
    ends.client(again)
    # Close and Parse of the very bytes s1 was defined with go first, in the same batch.
    assert ends.to_server == (
        pg.close("S", "s1") + pg.parse("s1", SELECT_S1, [23]) + b"".join(again)
    )
    assert ends.executed() == [(SELECT_S1, True), (SELECT_S1, True)]
    answers = [pg.bind_complete(), pg.data_row(b"b"), pg.command_complete("SELECT 1"),
               pg.ready_for_query("I")]  # fmt: skip
    ends.server([pg.close_complete(), pg.parse_complete(), *answers])
    assert ends.to_client == b"".join(answers)  # the answers to Witness's requests are its own
    assert ends.conn.rewriting is False
    assert ends.results() == {1: ("ok", None), 2: ("ok", None)}


@chunkings
def test_without_refresh_the_second_run_is_unknown(chunker: Chunker) -> None:
    ends = Ends(chunker)
    _first_run(ends)
    ends.client([pg.bind("", "s1", [b"2"]), pg.execute(""), pg.sync()])
    executed = [e.command for e in ends.events if isinstance(e, CommandStarted)]
    assert executed[1].text_known is False


@chunkings
def test_a_refresh_that_fails_tells_the_client_its_error(chunker: Chunker) -> None:
    ends = Refreshing(chunker)
    _first_run(ends)
    ends.to_client = b""
    ends.client([pg.bind("", "s1", [b"2"]), pg.execute(""), pg.sync()])
    gone = pg.error_response('relation "t" does not exist', "42P01")
    ends.server([pg.close_complete(), gone, pg.ready_for_query("I")])
    assert ends.to_client == gone + pg.ready_for_query("I")
    assert ends.results()[2] == ("error", "42P01")
    assert ends.conn.rewriting is False


@chunkings
def test_a_refreshed_statement_that_is_blocked_sends_neither_bind_nor_execute(
    chunker: Chunker,
) -> None:
    ends = Refreshing(chunker)
    ends.blocks = ()  # the first run is allowed; then the policy changes its mind
    _first_run(ends, "delete from t where id = $1")
    ends.blocks = ("delete",)
    ends.to_server = ends.to_client = b""
    ends.client([pg.bind("", "s1", [b"2"]), pg.execute(""), pg.sync()])
    prefix = pg.close("S", "s1") + pg.parse("s1", "delete from t where id = $1", [23])
    assert ends.to_server == prefix + pg.parse(BLOCKED_STATEMENT, BLOCKED) + pg.sync()
    ends.server([pg.close_complete(), pg.parse_complete(), SYNTAX, pg.ready_for_query("I")])
    assert ends.to_client == TOLD + pg.ready_for_query("I")
    assert ends.results()[2] == ("blocked", "42501")


@chunkings
def test_commands_deferred_until_the_session_is_established(chunker: Chunker) -> None:
    """A client that sends commands with its startup packet: they wait, undecided, until
    the relay can decide them; then the blocked one is replaced, the rest go as sent."""
    conn = PostgresConnection()
    early = [pg.query("select 1"), pg.query("delete from t"), pg.query("select 2")]
    sent = b""
    started = []
    for chunk in chunker([LOGIN_IN[0], *early]):
        for event in conn.receive_client(chunk):
            if isinstance(event, CommandStarted):
                conn.defer(event.n)
                started.append(event)
        sent += conn.client_payload(chunk)
    assert sent == LOGIN_IN[0]  # the startup packet goes; the commands wait
    assert conn.deferred_bytes == len(b"".join(early))
    conn.block(started[1].n, RULE)
    assert conn.release() == pg.query("select 1") + pg.query(BLOCKED) + pg.query("select 2")
    assert conn.deferred_bytes == 0
    assert conn.release() == b""


@chunkings
def test_a_sync_between_bind_and_a_blocked_execute_still_reaches_the_server(
    chunker: Chunker,
) -> None:
    """The replacement may start at the Bind only within one pipeline: the Sync between
    them must reach the server, or its answers and the trail's commands fall out of step."""
    ends = Ends(chunker)
    ends.client([pg.query("begin")])
    ends.server([pg.command_complete("BEGIN"), pg.ready_for_query("T")])
    ends.to_server = ends.to_client = b""
    batch = [pg.parse("", "delete from t"), pg.bind("", ""), pg.sync(), pg.execute(""), pg.sync()]
    ends.client(batch)
    assert ends.to_server == b"".join(batch[:3]) + pg.parse(BLOCKED_STATEMENT, BLOCKED) + batch[4]
    ends.server(
        [pg.parse_complete(), pg.bind_complete(), pg.ready_for_query("T"), SYNTAX,
         pg.ready_for_query("E")]
    )  # fmt: skip
    assert ends.to_client.endswith(TOLD + pg.ready_for_query("E"))
    assert ends.results()[2] == ("blocked", "42501")
    ends.client([pg.query("rollback")])
    ends.server([pg.command_complete("ROLLBACK"), pg.ready_for_query("I")])
    assert ends.results()[3] == ("ok", None)
