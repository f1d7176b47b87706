"""What the trail says a backend ran, against what a real PostgreSQL logged that it ran:
prepared statements redefined behind the protocol's back, SQL PREPARE and EXECUTE, and texts
in client encodings other than UTF-8."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pglog
import pgwire as wire
import psycopg
import pytest
from pgclient import RawClient
from witnessproc import Witness, run, sessions

from appliance.lab.postgres import PostgresServer

SJIS_TEXT = "insert into enc values (E'ソ'); insert into enc values ('x')"


def _commands(trail: Path) -> list[dict[str, Any]]:
    """The one finished session's commands, each with its result under ``result``."""
    deadline = time.monotonic() + 10
    while True:
        found = [s for s in sessions(trail).values() if s["end"] is not None]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(found) == 1, found
    entry = found[0]
    return [{**c, "result": entry["results"].get(c["n"])} for c in entry["commands"]]


def _logged(pg_server: PostgresServer, offset: int) -> list[str]:
    time.sleep(0.3)  # the server writes its log a moment after it answers
    return [text for _, text in pglog.statements(pg_server.log_path, offset)]


@pytest.fixture
def table(pg: PostgresServer) -> None:
    pg.psql("drop table if exists t; create table t (x int); insert into t values (1), (2)")


def test_a_statement_redefined_by_a_do_block_is_not_recorded_as_its_old_text(
    pg: PostgresServer, witness: Witness, table: None
) -> None:
    offset = pglog.size(pg.log_path)
    do = "DO $$ BEGIN EXECUTE 'DEALLOCATE s1'; EXECUTE 'PREPARE s1 AS DELETE FROM t'; END $$"
    with RawClient(witness.port) as client:
        client.send(wire.parse("s1", "select 1"), wire.sync())
        client.until_ready()
        client.send(wire.query(do))
        assert client.tags() == ["DO"]
        client.send(wire.bind("", "s1"), wire.execute(), wire.sync())
        assert client.tags() == ["DELETE 2"]  # the backend ran the DELETE
    assert "PREPARE s1 AS DELETE FROM t" in _logged(pg, offset)  # what "execute s1" ran
    commands = _commands(witness.trail)
    do_n = next(c["n"] for c in commands if c["text"] == do)
    execute = commands[-1]
    assert execute["statement"] == "s1"
    assert execute["text_known"] is False
    assert execute["text"] != "select 1"
    assert execute["prepared"] == [
        {
            "kind": "statement",
            "name": "s1",
            "text": "select 1",
            "how": "parsed",
            "defined": 0,
            "doubt": "changed",
            "changed_by": do_n,
        }
    ]
    assert execute["result"]["tags"] == ["DELETE 2"]


def test_sql_prepare_execute_deallocate_and_discard(
    pg: PostgresServer, witness: Witness, table: None
) -> None:
    wipe = "DELETE FROM t WHERE x = $1"
    with RawClient(witness.port) as client:
        client.send(wire.query(f"PREPARE wipe(int) AS {wipe}"))
        assert client.tags() == ["PREPARE"]
        client.send(wire.bind("", "wipe", [b"1"]), wire.execute(), wire.sync())  # a Bind to it
        assert client.tags() == ["DELETE 1"]
        client.send(wire.query("prepare two as select 2; execute two"))
        assert client.tags() == ["PREPARE", "SELECT 1"]
        client.send(wire.query("deallocate two; execute two"))
        assert client.tags() == ["DEALLOCATE", 'ERROR: prepared statement "two" does not exist']
        client.send(wire.query("discard all"))
        assert client.tags() == ["DISCARD ALL"]
        client.send(wire.bind("", "wipe", [b"2"]), wire.execute(), wire.sync())
        assert client.tags() == ['ERROR: prepared statement "wipe" does not exist']
    commands = _commands(witness.trail)
    bind = commands[1]
    assert (bind["kind"], bind["statement"], bind["text"]) == ("execute", "wipe", wipe)
    assert bind["params"] == ["1"]
    assert "text_known" not in bind
    both = commands[2]
    assert both["prepared"] == [
        {"kind": "statement", "name": "two", "text": "select 2", "how": "prepared", "defined": 3}
    ]
    gone = commands[3]
    assert gone["prepared"][0]["doubt"] == "unseen" and gone["text_known"] is False
    after_discard = commands[5]
    assert after_discard["prepared"][0]["doubt"] == "unseen"


def test_psycopg_prepared_statements_after_their_first_run(witness: Witness) -> None:
    # A prepared SELECT's own run may redefine it (a function in it may run dynamic SQL),
    # so only its first run is certain; the rest name the text they were prepared with.
    with psycopg.connect(witness.url()) as conn:
        for i in range(3):
            conn.execute("select %s::bigint * 2", (i,), prepare=True)
    runs = [c for c in _commands(witness.trail) if "$1::bigint" in c["text"]]
    assert len(runs) == 3
    first, *later = runs
    assert first["text"] == "select $1::bigint * 2" and "text_known" not in first
    for again in later:
        assert again["text_known"] is False
        assert again["prepared"][0]["text"] == "select $1::bigint * 2"
        assert again["prepared"][0]["doubt"] == "changed"
    assert [c["params"] for c in runs] == [["0"], ["1"], ["2"]]


# --- client encodings ---------------------------------------------------------------------


@pytest.fixture
def enc(pg: PostgresServer) -> None:
    pg.psql("drop table if exists enc; create table enc (v text)")


def test_psql_under_sjis_records_what_the_server_ran(
    pg: PostgresServer, witness: Witness, enc: None
) -> None:
    offset = pglog.size(pg.log_path)
    out = run("psql", "-X", "-c", SJIS_TEXT.encode("cp932"), witness.url(), env=_env("SJIS"))
    assert out.returncode == 0, out.stderr
    assert SJIS_TEXT in _logged(pg, offset)
    assert pg.psql("select v from enc order by v") == "x\nソ\n"
    (command,) = [c for c in _commands(witness.trail) if "enc" in c["text"]]
    assert command["text"] == SJIS_TEXT
    assert "decoding" not in command
    assert command["result"]["tags"] == ["INSERT 0 1", "INSERT 0 1"]


@pytest.mark.parametrize(
    ("encoding", "value"),
    [("EUC_JP", "日本語のテキスト"), ("BIG5", "繁體中文"), ("WIN1251", "Привет, мир")],
)
def test_psycopg_texts_and_parameters_in_other_encodings(
    pg: PostgresServer, witness: Witness, enc: None, encoding: str, value: str
) -> None:
    offset = pglog.size(pg.log_path)
    literal = f"insert into enc values ('{value}')"
    with psycopg.connect(witness.url(), client_encoding=encoding, autocommit=True) as conn:
        assert conn.info.encoding != "utf-8"
        conn.execute(literal)
        conn.execute("insert into enc values (%s)", (value,))
        assert conn.execute("select v from enc").fetchall() == [(value,), (value,)]
    assert literal in _logged(pg, offset)
    commands = _commands(witness.trail)
    assert literal in [c["text"] for c in commands]
    bound = next(c for c in commands if c.get("params"))
    assert bound["params"] == [value]
    assert all("decoding" not in c for c in commands)


def test_a_pipelined_change_of_encoding_is_corrected_by_the_answer(
    pg: PostgresServer, witness: Witness, enc: None
) -> None:
    offset = pglog.size(pg.log_path)
    sjis = SJIS_TEXT.encode("cp932")
    with RawClient(witness.port) as client:
        client.send(wire.query("set client_encoding to 'SJIS'"), wire.message(b"Q", sjis + b"\0"))
        assert client.tags(2) == ["SET", "INSERT 0 1", "INSERT 0 1"]
    assert SJIS_TEXT in _logged(pg, offset)
    guessed = _commands(witness.trail)[1]
    # Recorded before the backend said SJIS: unsure, bytes kept (they are not UTF-8) ...
    assert guessed["text"] == "\\x" + sjis.hex()
    assert guessed["decoding"] == {"encoding": "UTF8", "raw": True, "changed_by": 1}
    assert guessed["text_known"] is False
    # ... and read again once it had.
    assert guessed["result"]["reading"] == {"encoding": "SJIS", "text": SJIS_TEXT}


def test_a_change_of_encoding_inside_a_pipeline_stays_unsure(
    pg: PostgresServer, witness: Witness, enc: None
) -> None:
    offset = pglog.size(pg.log_path)
    insert = "insert into enc values ('ソ')"
    raw = insert.encode("cp932")
    with RawClient(witness.port) as client:
        client.send(
            wire.parse("", "set client_encoding to 'SJIS'"),
            wire.bind("", ""),
            wire.execute(),
            wire.message(b"P", b"\0" + raw + b"\0\0\0"),
            wire.bind("", ""),
            wire.execute(),
            wire.sync(),
        )
        assert client.tags() == ["SET", "INSERT 0 1"]
    assert any(line.endswith(insert) for line in _logged(pg, offset))
    unsure = _commands(witness.trail)[1]
    assert unsure["decoding"]["changed_by"] == 1
    assert unsure["text_known"] is False
    assert "reading" not in unsure["result"]


def _env(encoding: str) -> dict[str, str]:
    return {**os.environ, "PGCLIENTENCODING": encoding}


def test_a_statement_name_read_in_another_encoding_names_another_statement(
    pg: PostgresServer, witness: Witness, table: None
) -> None:
    # C3 A9 is "é" in UTF-8, "ﾃｩ" in SJIS. Sent just after a change to SJIS that the backend
    # has not reported yet, the name leads the backend to the statement that deletes.
    e_acute, katakana = "é".encode(), "ﾃｩ".encode()
    with RawClient(witness.port) as client:
        client.send(
            wire.message(b"P", e_acute + b"\0select 1\0\0\0"),
            wire.message(b"P", katakana + b"\0delete from t\0\0\0"),
            wire.sync(),
        )
        client.until_ready()
        client.send(
            wire.query("set client_encoding to 'SJIS'"),
            wire.message(b"B", b"\0" + e_acute + b"\0" + b"\0" * 6),
            wire.execute(),
            wire.sync(),
        )
        assert client.tags(2) == ["SET", "DELETE 2"]
    execute = _commands(witness.trail)[-1]
    assert execute["text_known"] is False
    assert execute["prepared"][0]["doubt"] == "name"
    assert execute["prepared"][0]["changed_by"] == 1
