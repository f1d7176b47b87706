"""``witness tail -f`` beside a real recorder: psql's commands through ``witness serve`` with a
[policy], against a real PostgreSQL, appear as the recorder commits them, with the policy's
decision and the result; Ctrl-C ends the tail."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from witnesscli import WITNESS, Follower, witness_env
from witnessproc import Witness, run

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
"""


@pytest.fixture
def guarded(pg: PostgresServer, tmp_path: Path) -> Iterator[Witness]:
    recorder = Witness(pg.port, tmp_path / "trail.db", tables=POLICY)
    yield recorder
    recorder.stop()


@pytest.fixture
def table(pg: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"create table {name} (id int primary key)")
        conn.execute(f"insert into {name} select generate_series(1, 3)")
    yield name
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"drop table if exists {name}")


def psql(port: int, *commands: str) -> subprocess.CompletedProcess[str]:
    argv = ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    for command in commands:
        argv += ["-c", command]
    return run(*argv)


def test_tail_follows_the_recorder(guarded: Witness, table: str) -> None:
    assert psql(guarded.port, "select 'before'").returncode == 0
    watch = Follower(guarded.trail, "-n", "1")
    try:
        before = watch.take(2)
        assert [(e["event"], e.get("text")) for e in before] == [
            ("command", "select 'before'"),
            ("result", None),
        ]
        done = psql(guarded.port, f"delete from {table}", f"select count(*) from {table}")
        assert done.stdout == "3\n", done.stderr
        blocked, refusal, counted, answer = watch.take(4)
    finally:
        status, err = watch.interrupt()
    assert (status, err) == (0, "")
    assert (blocked["event"], blocked["text"]) == ("command", f"delete from {table}")
    assert blocked["decision"]["action"] == "block"
    assert blocked["decision"]["rule"] == "no-wipe"
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
    # The same, for people, once the sessions are over.
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
