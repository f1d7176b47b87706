"""Guardrails with real clients: psql, psycopg in pipeline mode and pgbench, through
``witness serve`` with a [policy], against a real PostgreSQL.

A blocked command never reaches the backend (PostgreSQL's own statement log is the referee),
the client gets a 42501 that names the rule and goes on, the commands after it behave as
PostgreSQL makes them behave after any error, and the trail holds the command, the decision
and the rule, which ``witness tail`` shows as they are committed.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pglog
import pgwire as wire
import psycopg
import pytest
from pgclient import RawClient
from witnesscli import WITNESS, Follower, witness_env
from witnessproc import Witness, events, run

from appliance.lab.postgres import PostgresServer

POLICY = """
[policy]
default = "allow"

[[policy.rules]]
name = "no-wipe"
action = "block"
kinds = ["update", "delete"]
no_where = true
message = "UPDATE and DELETE need a WHERE"

[[policy.rules]]
name = "tellers-read-only"
action = "block"
writes = ["pgbench_tellers"]
message = "the tellers are read-only for agents"

[[policy.rules]]
name = "no-drop"
action = "block"
kinds = ["drop_table", "truncate"]
message = "nothing is dropped"
"""


@pytest.fixture
def guarded(pg: PostgresServer, tmp_path: Path) -> Iterator[Witness]:
    recorder = Witness(pg.port, tmp_path / "trail.db", tables=POLICY)
    yield recorder
    recorder.stop()


@pytest.fixture
def table(pg: PostgresServer) -> Iterator[str]:
    name = f"g_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int primary key, v text)")
        conn.execute(f"insert into {name} select g, 'row ' || g from generate_series(1, 5) g")
    yield name
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def count(pg: PostgresServer, table: str) -> int:
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        found = conn.execute(f"select count(*) from {table}").fetchone()
    assert found is not None
    return int(found[0])


def psql(port: int, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(
        "psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres",
        *argv, input=stdin,
    )  # fmt: skip


def decided(trail: Path, needle: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """The commands whose text holds ``needle``, each with its result. A result is committed
    within a few milliseconds of the answer (it holds no bytes back): a missing one is
    waited for, up to a few seconds."""
    deadline = time.monotonic() + 5.0
    while True:
        found = events(trail)
        results = {(e["session"], e["n"]): e for e in found if e["type"] == "result"}
        pairs = [
            (e, results.get((e["session"], e["n"])))
            for e in found
            if e["type"] == "command" and needle in e.get("text", "")
        ]
        if all(r is not None for _, r in pairs) or time.monotonic() > deadline:
            return pairs
        time.sleep(0.05)


def test_psql_a_blocked_delete_never_reaches_the_server_and_the_session_goes_on(
    pg: PostgresServer, guarded: Witness, table: str
) -> None:
    done = psql(
        guarded.port,
        "-At",
        "-c", f"delete from {table}",
        "-c", f"select count(*) from {table}",
    )  # fmt: skip
    assert done.stderr == (
        "ERROR:  witness: blocked by rule 'no-wipe': UPDATE and DELETE need a WHERE\n"
    )
    assert done.stdout == "5\n"  # the session went on, and nothing was deleted
    assert count(pg, table) == 5
    logged = [text for _, text in pglog.statements(pg.log_path)]
    assert not [text for text in logged if f"delete from {table}" == text.strip()]
    # What the server got in its place: a text its grammar refused, logged as such.
    assert "STATEMENT:  WITNESS BLOCKED THIS COMMAND" in pg.log_path.read_text()
    [(command, result)] = decided(guarded.trail, f"delete from {table}")
    assert command["decision"] == {
        "action": "block",
        "rule": "no-wipe",
        "reason": "UPDATE and DELETE need a WHERE",
    }
    assert result is not None and result["status"] == "blocked"
    assert result["error"]["code"] == "42501"
    # The same session went on: a command after the block ran and was allowed.
    more = psql(guarded.port, "-At", "-c", f"delete from {table} where id = 1; select 1")
    assert more.returncode == 0, more.stderr
    assert count(pg, table) == 4


def test_psql_a_block_inside_a_transaction_aborts_it_as_any_error_would(
    pg: PostgresServer, guarded: Witness, table: str
) -> None:
    script = (
        "begin;\n"
        f"insert into {table} values (100, 'in the transaction');\n"
        f"update {table} set v = 'everything';\n"
        f"select count(*) from {table};\n"
        "commit;\n"
    )
    done = psql(guarded.port, "-At", stdin=script)
    assert "blocked by rule 'no-wipe'" in done.stderr, done.stderr
    assert "current transaction is aborted" in done.stderr, done.stderr
    assert "ROLLBACK" in done.stdout, done.stdout
    assert count(pg, table) == 5  # the insert before the block went with the transaction


def _pipeline(url: str, table: str, bad: str) -> tuple[list[str], list[int]]:
    """Insert, something that fails, insert, Sync; then insert again: the errors raised
    (their SQLSTATE classes; psycopg may raise one at any of the steps, as results come in)
    and the rows left."""
    errors: list[str] = []

    def step(run: Callable[[], object]) -> None:
        try:
            run()
        except psycopg.Error as exc:
            errors.append(f"{(exc.sqlstate or '??')[:2]} {type(exc).__name__}")

    with psycopg.connect(url, autocommit=True) as conn:
        with conn.pipeline() as pipe:
            for sql in (
                f"insert into {table} values (201, 'before')",
                bad,
                f"insert into {table} values (202, 'after, same batch')",
            ):
                step(lambda sql=sql: conn.execute(sql))
            step(pipe.sync)
        conn.execute(f"insert into {table} values (203, 'next batch')")
        rows = conn.execute(f"select id from {table} where id > 200 order by id").fetchall()
    return errors, [r[0] for r in rows]


def test_psycopg_pipeline_a_blocked_command_fails_its_batch_as_postgresql_would(
    pg: PostgresServer, guarded: Witness, table: str
) -> None:
    # The referee: the same pipeline straight to PostgreSQL, with a command that fails there.
    direct = _pipeline(pg.url(), table, f"select 1/0 from {table}")
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"delete from {table} where id > 200")
    through = _pipeline(guarded.url(), table, f"delete from {table}")
    # The batch failed whole, the next one ran, the same rows are there; the errors are the
    # division (22012) straight to PostgreSQL and the block (42501) through Witness.
    assert direct[1] == through[1] == [203], (direct, through)
    assert direct[0][0] == "22 DivisionByZero", direct
    assert through[0][0] == "42 InsufficientPrivilege", through
    # Whether psycopg also raises PipelineAborted for the rest depends on when the results
    # come in: straight to PostgreSQL as through Witness.
    for errors in (direct[0][1:], through[0][1:]):
        assert set(errors) <= {"?? PipelineAborted"}, (direct, through)
    assert count(pg, table) >= 5  # nothing of the table was deleted
    [(command, result)] = decided(guarded.trail, f"delete from {table}")
    assert command["decision"]["rule"] == "no-wipe"
    assert result is not None and result["status"] == "blocked"
    skipped = decided(guarded.trail, "after, same batch")
    assert [r["status"] for _, r in skipped if r is not None] == ["skipped"]


def test_pgbench_runs_reads_and_every_write_to_a_guarded_table_is_blocked(
    pg: PostgresServer, guarded: Witness
) -> None:
    init = run("pgbench", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-i", "-q",
               "postgres")  # fmt: skip
    assert init.returncode == 0, init.stderr

    def tellers() -> int:
        with psycopg.connect(pg.url(), autocommit=True) as conn:
            found = conn.execute("select sum(tbalance) from pgbench_tellers").fetchone()
        assert found is not None
        return int(found[0] or 0)

    before = tellers()
    reads = run("pgbench", "-h", "127.0.0.1", "-p", str(guarded.port), "-U", "postgres", "-n",
                "-S", "-c", "2", "-t", "50", "-M", "prepared", "postgres")  # fmt: skip
    assert reads.returncode == 0, reads.stderr
    writes = run("pgbench", "-h", "127.0.0.1", "-p", str(guarded.port), "-U", "postgres", "-n",
                 "-c", "2", "-t", "20", "postgres")  # fmt: skip
    assert writes.returncode != 0
    assert "tellers-read-only" in writes.stderr, writes.stderr
    assert tellers() == before
    blocked = [c for c, _ in decided(guarded.trail, "UPDATE pgbench_tellers")]
    assert blocked and all(c["decision"]["rule"] == "tellers-read-only" for c in blocked)
    allowed = [c for c, _ in decided(guarded.trail, "SELECT abalance FROM pgbench_accounts")]
    assert len(allowed) >= 100
    assert all(c["decision"] == {"action": "allow", "rule": None, "reason": allowed[0]["decision"]
               ["reason"]} for c in allowed)  # fmt: skip


def test_without_a_policy_nothing_is_decided(
    pg: PostgresServer, witness: Witness, table: str
) -> None:
    done = psql(witness.port, "-c", f"delete from {table}")
    assert done.returncode == 0, done.stderr
    assert count(pg, table) == 0
    [(command, _)] = decided(witness.trail, f"delete from {table}")
    assert "decision" not in command


CODE_ALLOWED = """
[policy]
default = "allow"

[[policy.rules]]
name = "code-allowed"
action = "allow"
kinds = ["do"]

[[policy.rules]]
name = "no-wipe"
action = "block"
kinds = ["update", "delete"]
no_where = true
"""


def test_a_statement_code_redefined_runs_as_recorded_under_a_policy(
    pg: PostgresServer, tmp_path: Path, table: str
) -> None:
    """The attack of the audit-truth issue, where a policy decides: a DO block (allowed
    here) redefines s1 as a DELETE behind the protocol's back. Without a policy the trail
    says it does not know what s1 runs; with one, Witness parses s1 again from its recorded
    bytes before the Bind, so the backend runs the text the policy decided on."""
    recorder = Witness(pg.port, tmp_path / "trail.db", tables=CODE_ALLOWED)
    try:
        do = (
            f"DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; "
            f"EXECUTE 'PREPARE s1 AS DELETE FROM {table}'; END $$"
        )
        with RawClient(recorder.port) as client:
            client.send(wire.parse("s1", f"select count(*) from {table}"), wire.sync())
            client.until_ready()
            client.send(wire.query(do))
            assert client.tags() == ["DO"]
            client.send(wire.bind("", "s1"), wire.execute(), wire.sync())
            assert client.tags() == ["SELECT 1"]  # the recorded text ran, not the DELETE
    finally:
        recorder.stop()
    assert count(pg, table) == 5
    [(command, result)] = decided(recorder.trail, f"select count(*) from {table}")
    assert command.get("text_known", True) is True and "prepared" not in command
    assert command["decision"]["action"] == "allow"
    assert result is not None and result["tags"] == ["SELECT 1"]


def test_commands_sent_with_the_startup_packet_are_decided_once_the_session_is(
    pg: PostgresServer, guarded: Witness, table: str
) -> None:
    """A client that does not wait for the login to end: its commands wait, undecided,
    until the identity and backend are known, and are then decided like any other."""
    sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=30)
    with contextlib.closing(sock):
        sock.sendall(
            wire.startup(user="postgres", database="postgres")
            + wire.query(f"delete from {table}")
            + wire.query(f"select count(*) from {table}")
        )
        answers = b""
        while answers.count(b"Z\0\0\0\5") < 3:  # the login's, then one per query
            chunk = sock.recv(65536)
            assert chunk, answers
            answers += chunk
    assert b"blocked by rule 'no-wipe'" in answers
    assert count(pg, table) == 5
    [(command, result)] = decided(guarded.trail, f"delete from {table}")
    assert command["decision"]["rule"] == "no-wipe"
    assert result is not None and result["status"] == "blocked"
    [(later, _)] = decided(guarded.trail, f"select count(*) from {table}")
    assert later["decision"]["action"] == "allow"


def test_tail_shows_the_decisions_as_they_are_committed(guarded: Witness, table: str) -> None:
    """``witness tail -f`` beside the recorder: each command appears as it is committed, with
    the policy's decision, then its result; Ctrl-C ends the tail."""
    assert psql(guarded.port, "-c", "select 'before'").returncode == 0
    watch = Follower(guarded.trail, "-n", "1")
    try:
        before = watch.take(2)
        assert [(e["event"], e.get("text")) for e in before] == [
            ("command", "select 'before'"),
            ("result", None),
        ]
        done = psql(
            guarded.port, "-At", "-c", f"delete from {table}", "-c", f"select count(*) from {table}"
        )
        assert done.stdout == "5\n", done.stderr
        blocked, refusal, counted, answer = watch.take(4)
    finally:
        status, err = watch.interrupt()
    assert (status, err) == (0, "")
    assert (blocked["event"], blocked["text"]) == ("command", f"delete from {table}")
    assert (blocked["decision"]["action"], blocked["decision"]["rule"]) == ("block", "no-wipe")
    assert (refusal["event"], refusal["n"], refusal["status"]) == (
        "result",
        blocked["n"],
        "blocked",
    )
    assert refusal["error"]["code"] == "42501"
    assert counted["decision"]["action"] == "allow"
    assert (answer["status"], answer["rows"]) == ("ok", 1)
    assert blocked["session"] == counted["session"] == answer["session"]
    assert blocked["backend"] == "default"
    # The same, for people, once the session is over.
    lines = subprocess.run(
        [*WITNESS, "tail", "-n", "2", "--trail", str(guarded.trail)],
        capture_output=True,
        text=True,
        env=witness_env(),
        check=True,
    ).stdout.splitlines()
    assert f"-> #1 block (no-wipe): delete from {table}" in lines[0]
    assert "<- #1 blocked rows=" in lines[1] and "42501" in lines[1]
    assert f"-> #2 allow: select count(*) from {table}" in lines[2]
