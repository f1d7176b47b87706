"""Startup, negotiation, cancel, authentication and goodbye, as bytes in and events out."""

from __future__ import annotations

import pgwire as pg
import pytest
from playbook import LOGIN, READY, client, closed, finished, play, server, started

from appliance.model import ErrorInfo
from appliance.protocols.errors import ProtocolError
from appliance.protocols.postgres.connection import PostgresConnection
from appliance.protocols.postgres.events import (
    BackendKey,
    CancelRequest,
    NegotiationRequest,
    Ready,
    SessionError,
    Startup,
    Terminate,
)

ALICE = {"user": "alice", "database": "shop", "application_name": "agent"}


def test_plain_startup_then_login() -> None:
    play(
        client(pg.startup(**ALICE))(Startup((3, 0), ALICE)),
        server(*pg.WELCOME)(BackendKey(4242, 99), READY),
    )


def test_startup_state_is_kept() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(**ALICE))
    conn.receive_server(b"".join(pg.WELCOME))
    assert conn.params == ALICE
    assert conn.backend_key == BackendKey(4242, 99)


@pytest.mark.parametrize(
    ("request_bytes", "kind"), [(pg.ssl_request(), "ssl"), (pg.gss_request(), "gss")]
)
def test_startup_after_encryption_request(request_bytes: bytes, kind: str) -> None:
    play(
        client(request_bytes)(NegotiationRequest(kind)),
        client(pg.startup(**ALICE))(Startup((3, 0), ALICE)),
        server(*pg.WELCOME)(BackendKey(4242, 99), READY),
    )


def test_gss_refused_then_ssl_refused_then_startup() -> None:
    play(
        client(pg.gss_request())(NegotiationRequest("gss")),
        client(pg.ssl_request())(NegotiationRequest("ssl")),
        client(pg.startup(user="bob"))(Startup((3, 0), {"user": "bob"})),
    )


def test_newer_minor_version_and_protocol_negotiation() -> None:
    play(
        client(pg.startup((3, 2), user="bob", _pq_="x"))(
            Startup((3, 2), {"user": "bob", "_pq_": "x"})
        ),
        server(pg.negotiate_protocol_version(0, "_pq_"), *pg.WELCOME)(BackendKey(4242, 99), READY),
    )


def test_cancel_request() -> None:
    play(client(pg.cancel_request(4242, -7))(CancelRequest(4242, 2**32 - 7)))


def test_nothing_may_follow_a_cancel_request() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.cancel_request(1, 2))
    with pytest.raises(ProtocolError, match="cancel phase") as caught:
        conn.receive_client(pg.query("select 1"))
    assert caught.value.side == "client"


SECRETS = ("hunter2", "c2VjcmV0cHJvb2Y=", "r=clientnonce")


def test_scram_exchange_yields_no_events_and_no_secret() -> None:
    client_first = b"n,,n=,r=clientnonce"
    client_final = b"c=biws,r=clientnonceservernonce,p=c2VjcmV0cHJvb2Y="
    events = play(
        *LOGIN[:1],
        server(pg.auth_sasl("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"))(),
        client(pg.sasl_initial_response("SCRAM-SHA-256", client_first))(),
        server(pg.authentication(11, b"r=clientnonceservernonce,s=c2FsdA==,i=4096"))(),
        client(pg.sasl_response(client_final))(),
        server(pg.authentication(12, b"v=signature"), *pg.WELCOME)(BackendKey(4242, 99), READY),
    )
    assert not any(secret in repr(events) for secret in SECRETS)


@pytest.mark.parametrize("code", [3, 5])  # cleartext, md5
def test_password_exchange_yields_no_events(code: int) -> None:
    events = play(
        *LOGIN[:1],
        server(pg.authentication(code, b"salt" if code == 5 else b""))(),
        client(pg.password("hunter2"))(),
        server(*pg.WELCOME)(BackendKey(4242, 99), READY),
    )
    assert "hunter2" not in repr(events)


def test_password_bytes_are_never_buffered() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    secret = pg.password("hunter2" * 100)
    conn.receive_client(secret[:300])
    assert b"hunter2" not in bytes(conn._client._buf)
    assert conn.receive_client(secret[300:]) == []


def test_failed_authentication_is_a_session_error() -> None:
    failure = ErrorInfo("FATAL", "28P01", 'password authentication failed for user "alice"')
    play(
        *LOGIN[:1],
        server(pg.authentication(3))(),
        client(pg.password("wrong"))(),
        server(pg.error_response(failure.message, failure.code, "FATAL"))(SessionError(failure)),
    )


def test_password_after_login_is_refused() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    conn.receive_server(b"".join(pg.WELCOME))
    with pytest.raises(ProtocolError, match="password message"):
        conn.receive_client(pg.password("late"))


def test_terminate() -> None:
    play(*LOGIN, client(pg.terminate())(Terminate()))


def test_nothing_may_follow_terminate() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    with pytest.raises(ProtocolError, match="terminated phase"):
        conn.receive_client(pg.terminate() + pg.query("select 1"))


def test_close_aborts_unfinished_commands() -> None:
    play(
        *LOGIN,
        client(pg.query("select pg_sleep(60)"), pg.query("select 2"))(
            started(1, "query", "select pg_sleep(60)"), started(2, "query", "select 2")
        ),
        server(pg.row_description("pg_sleep"))(),
        closed(
            finished(1, "aborted", bytes=pg.size(pg.row_description("pg_sleep"))),
            finished(2, "aborted"),
        ),
    )


def test_close_is_idempotent_and_ends_the_session() -> None:
    conn = PostgresConnection()
    conn.receive_client(pg.startup(user="alice"))
    assert conn.close() == []
    assert conn.close() == []
    with pytest.raises(ProtocolError, match=r"after close\(\)"):
        conn.receive_server(pg.auth_ok())


def test_commands_pipelined_behind_the_startup_packet() -> None:
    # With trust authentication a client may send its first query without waiting.
    play(
        client(pg.startup(user="alice"), pg.query("select 1"))(
            Startup((3, 0), {"user": "alice"}), started(1, "query", "select 1")
        ),
        server(*pg.WELCOME, pg.command_complete("SELECT 0"), pg.ready_for_query("T"))(
            BackendKey(4242, 99),
            READY,
            finished(
                1,
                tags=["SELECT 0"],
                bytes=pg.size(pg.command_complete("SELECT 0"), pg.ready_for_query()),
            ),
            Ready("T"),
        ),
    )


@pytest.mark.parametrize("first", [pg.ssl_request(), pg.gss_request() + pg.ssl_request(), b""])
def test_only_the_startup_packet_and_what_follows_it_are_forwarded(first: bytes) -> None:
    after = pg.startup(**ALICE) + pg.password("hunter2") + pg.query("select 1")
    stream = first + after
    for cut in range(len(stream) + 1):
        for split in (cut, len(stream) - cut):
            conn = PostgresConnection()
            forwarded = b""
            for chunk in (stream[:split], stream[split:]):
                conn.receive_client(chunk)
                forwarded += conn.client_payload(chunk)
            assert forwarded == after, split


def test_nothing_of_a_cancel_request_is_forwarded() -> None:
    conn = PostgresConnection()
    packet = pg.cancel_request(4242, 7)
    assert conn.receive_client(packet[:9]) == []
    assert conn.client_payload(packet[:9]) == b""
    (event,) = conn.receive_client(packet[9:])
    assert conn.client_payload(packet[9:]) == b""
    assert isinstance(event, CancelRequest) and event.packet == packet
