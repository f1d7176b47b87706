"""The recording relay against a real PostgreSQL 15, driven by psql and psycopg."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from witnessproc import Witness, run, sessions

from appliance.lab.postgres import PostgresServer


def only_session(trail: Path) -> dict:
    found = sessions(trail)
    assert len(found) == 1, found
    return next(iter(found.values()))


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def ended_sessions(trail: Path, count: int = 1) -> dict:
    return wait_for(
        lambda: (s := sessions(trail)) and sum(1 for v in s.values() if v["end"]) >= count and s
    )


def test_psql_simple_query_with_several_statements(witness: Witness) -> None:
    out = run(
        "psql",
        "-X",
        "-At",
        "-c",
        "select 1 as a; select 'two'",
        witness.url(application_name="audit-demo"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "two"]
    session = ended_sessions(witness.trail)
    entry = next(iter(session.values()))
    start = entry["start"]
    assert start["db_user"] == "postgres"
    assert start["database"] == "postgres"
    assert start["application_name"] == "audit-demo"
    assert start["owner"]["uid"] == os.geteuid()
    assert start["owner"]["exe"].endswith("/psql")
    assert start["owner"]["source"] == "sock_diag"
    texts = [c["text"] for c in entry["commands"]]
    assert "select 1 as a; select 'two'" in texts
    n = next(c["n"] for c in entry["commands"] if c["text"] == "select 1 as a; select 'two'")
    result = entry["results"][n]
    assert result["status"] == "ok"
    assert result["tags"] == ["SELECT 1", "SELECT 1"]
    assert result["rows"] == 2
    assert entry["end"]["bytes_in"] > 0 and entry["end"]["bytes_out"] > 0


def test_ssl_prefer_falls_back_and_require_is_refused(witness: Witness) -> None:
    assert run("psql", "-X", "-c", "select 1", witness.url(sslmode="prefer")).returncode == 0
    refused = run("psql", "-X", "-c", "select 1", witness.url(sslmode="require"))
    assert refused.returncode != 0
    assert "SSL" in refused.stderr


def test_extended_protocol_binary_parameters_and_prepared_statements(witness: Witness) -> None:
    with psycopg.connect(witness.url()) as conn:
        cur = conn.execute("select %s::int + 1, %s::text", (41, "héllo"), binary=True)
        assert cur.fetchone() == (42, "héllo")
        for i in range(3):
            conn.execute("select %s::bigint * 2", (i,), prepare=True)
        conn.execute("select %s::bytea, %s::bool, %s::int", (b"\x00\xff", True, None), binary=True)
    entry = next(iter(ended_sessions(witness.trail).values()))
    executes = [c for c in entry["commands"] if c["kind"] == "execute"]
    first = next(c for c in executes if c["text"].startswith("select $1::int + 1"))
    assert first["params"] == ["41", "héllo"]
    prepared = [c for c in executes if "select $1::bigint * 2" in c["text"]]
    assert [c["params"] for c in prepared] == [["0"], ["1"], ["2"]]
    assert prepared[-1]["statement"] != ""  # ran from a named, server-side prepared statement
    # Its first run may have redefined it (see test_statement_truth): the later runs say so.
    assert prepared[0]["text"] == "select $1::bigint * 2"
    assert [c["prepared"][0]["text"] for c in prepared[1:]] == ["select $1::bigint * 2"] * 2
    last = next(c for c in executes if c["text"].startswith("select $1::bytea"))
    assert last["params"] == ["\\x00ff", "t", None]
    assert all(entry["results"][c["n"]]["status"] == "ok" for c in executes)


def test_errors_carry_sqlstate(witness: Witness) -> None:
    with psycopg.connect(witness.url()) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.rollback()
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("select * from no_such_table")
    entry = next(iter(ended_sessions(witness.trail).values()))
    by_text = {c["text"]: entry["results"][c["n"]] for c in entry["commands"]}
    assert by_text["select 1/0"]["status"] == "error"
    assert by_text["select 1/0"]["error"]["code"] == "22012"
    assert by_text["select * from no_such_table"]["error"]["code"] == "42P01"


def test_copy_in_and_out(witness: Witness, pg: PostgresServer) -> None:
    pg.psql("drop table if exists copy_t; create table copy_t (a int, b text)")
    with psycopg.connect(witness.url()) as conn:
        with conn.cursor().copy("copy copy_t from stdin") as copy:
            for i in range(1000):
                copy.write_row((i, f"row {i}"))
        out = bytearray()
        with conn.cursor().copy("copy copy_t to stdout") as copy:
            for chunk in copy:
                out += chunk
    assert out.count(b"\n") == 1000
    entry = next(iter(ended_sessions(witness.trail).values()))
    by_text = {c["text"]: entry["results"][c["n"]] for c in entry["commands"]}
    copy_in = by_text["copy copy_t from stdin"]
    assert copy_in["tags"] == ["COPY 1000"] and copy_in["rows"] == 1000
    assert copy_in["copy_bytes"] > 0
    copy_out = by_text["copy copy_t to stdout"]
    assert copy_out["rows"] == 1000
    assert copy_out["copy_bytes"] == len(out)


def test_cancel_reaches_the_right_backend_and_is_recorded(witness: Witness) -> None:
    with psycopg.connect(witness.url()) as conn, psycopg.connect(witness.url()) as bystander:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(20)")
        assert time.monotonic() - started < 10
        conn.rollback()
        assert conn.execute("select 7").fetchone() == (7,)
        assert bystander.execute("select 8").fetchone() == (8,)
    found = ended_sessions(witness.trail, 2)
    target = next(s for s in found.values() if any(c["kind"] == "cancel" for c in s["commands"]))
    sleep = next(c for c in target["commands"] if c["text"] == "select pg_sleep(20)")
    assert target["results"][sleep["n"]]["error"]["code"] == "57014"


def test_long_session(witness: Witness) -> None:
    with psycopg.connect(witness.url(), autocommit=True) as conn:
        for i in range(3000):
            assert conn.execute("select %s::int", (i,)).fetchone() == (i,)
    entry = next(iter(ended_sessions(witness.trail).values()))
    executes = [c for c in entry["commands"] if c["kind"] == "execute"]
    assert [c["params"] for c in executes] == [[str(i)] for i in range(3000)]
    assert all(entry["results"][c["n"]]["status"] == "ok" for c in executes)


def test_two_hundred_concurrent_sessions(pg: PostgresServer, tmp_path: Path) -> None:
    # One user's 200 sessions: over the default limit of connections per user.
    witness = Witness(
        pg.port, tmp_path / "trail.db", backend_options="max_connections_per_uid = 250"
    )
    try:
        two_hundred_at_once(witness)
    finally:
        witness.stop()


def two_hundred_at_once(witness: Witness) -> None:
    barrier = threading.Barrier(200, timeout=60)
    errors: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            with psycopg.connect(witness.url(application_name=f"agent-{i}")) as conn:
                barrier.wait()
                for j in range(5):
                    assert conn.execute(f"select {i} * 1000 + {j}").fetchone() == (i * 1000 + j,)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    found = ended_sessions(witness.trail, 200)
    assert len(found) == 200
    for entry in found.values():
        i = int(entry["start"]["application_name"].removeprefix("agent-"))
        texts = [c["text"] for c in entry["commands"]]
        assert [f"select {i} * 1000 + {j}" for j in range(5)] == [
            t for t in texts if t.startswith("select ") and "* 1000" in t
        ]
        assert entry["start"]["owner"]["pid"] == os.getpid()


def test_malformed_client_ends_only_its_own_session(witness: Witness) -> None:
    with psycopg.connect(witness.url(application_name="bystander")) as good:
        assert good.execute("select 1").fetchone() == (1,)
        bad = socket.create_connection(("127.0.0.1", witness.port))
        # A plausible startup, then a Query message whose length field is nonsense.
        params = b"user\x00postgres\x00database\x00postgres\x00\x00"
        bad.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        time.sleep(0.5)
        bad.sendall(b"Q\x00\x00\x00\x02garbage")
        bad.settimeout(10)
        reply = b""
        while True:
            chunk = bad.recv(65536)
            if not chunk:
                break
            reply += chunk
        bad.close()
        assert b"08P01" in reply  # a protocol-native FATAL ErrorResponse
        assert good.execute("select 2").fetchone() == (2,)
    found = ended_sessions(witness.trail, 2)
    broken = next(s for s in found.values() if s["start"]["application_name"] is None)
    assert "protocol error" in broken["end"]["reason"]
    assert broken["errors"] and broken["errors"][0]["where"] == "client"


def test_unreachable_backend_gets_a_native_error(tmp_path: Path) -> None:
    from appliance.lab.net import free_port

    dead = free_port()
    recorder = Witness(dead, tmp_path / "trail.db")
    try:
        out = run("psql", "-X", "-c", "select 1", recorder.url())
        assert out.returncode != 0
        assert "unreachable" in out.stderr
        entry = next(iter(ended_sessions(recorder.trail).values()))
        assert "unreachable" in entry["end"]["reason"]
        assert entry["commands"] == []
    finally:
        recorder.stop()


def test_owner_is_the_connecting_process(witness: Witness) -> None:
    with psycopg.connect(witness.url()) as conn:
        conn.execute("select 1")
    entry = next(iter(ended_sessions(witness.trail).values()))
    owner = entry["start"]["owner"]
    assert owner["pid"] == os.getpid()
    assert owner["uid"] == os.geteuid()
    assert os.path.realpath(owner["exe"]) == os.path.realpath(sys.executable)
    assert owner["cgroup"] is not None


def test_refusal_before_startup_is_still_recorded(tmp_path: Path) -> None:
    from witnessproc import events

    from appliance.lab.net import free_port

    recorder = Witness(free_port(), tmp_path / "trail.db")
    try:
        silent = socket.create_connection(("127.0.0.1", recorder.port))
        silent.settimeout(10)
        reply = silent.recv(65536)  # the recorder gives up on the backend and says so
        silent.close()
        assert b"08006" in reply and b"unreachable" in reply
        found = wait_for(
            lambda: [e for e in events(recorder.trail) if e["type"] == "error"] or None
        )
        assert found[0]["where"] == "backend"
        assert found[0]["owner"]["pid"] == os.getpid()
    finally:
        recorder.stop()


def test_a_refusal_decided_before_startup_still_names_the_user(tmp_path: Path) -> None:
    from appliance.lab.net import free_port

    recorder = Witness(free_port(), tmp_path / "trail.db")
    try:
        late = socket.create_connection(("127.0.0.1", recorder.port))
        late.settimeout(10)
        time.sleep(0.5)  # the backend has been found unreachable by now
        params = b"user\x00late-agent\x00database\x00orders\x00\x00"
        late.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
        reply = late.recv(65536)
        late.close()
        assert b"08006" in reply and b"unreachable" in reply
        entry = next(iter(ended_sessions(recorder.trail).values()))
        assert entry["start"]["db_user"] == "late-agent"
        assert "unreachable" in entry["end"]["reason"]
    finally:
        recorder.stop()
