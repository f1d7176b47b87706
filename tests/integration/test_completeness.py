"""Nothing reaches the backend unrecorded: the server's own statement log is the witness."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

import pglog
import psycopg
from witnessproc import Witness, run, sessions

from appliance.lab.postgres import PostgresServer


def _pgbench(pg: PostgresServer, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return run("pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", *args, "postgres")


def test_every_logged_statement_is_in_the_trail_in_its_session(
    pg: PostgresServer, witness: Witness
) -> None:
    pg.psql("drop table if exists ledger; create table ledger (id int primary key, note text)")
    init = _pgbench(pg, pg.port, "-i", "-q", "-s", "1")
    assert init.returncode == 0, init.stderr
    offset = pglog.size(pg.log_path)

    assert run("psql", "-X", "-c", "select 1; select 2", witness.url()).returncode == 0
    script = "begin;\ninsert into ledger values (1, 'a');\nupdate ledger set note = 'b';\ncommit;\n"
    assert run("psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", script, witness.url()).returncode == 0
    with psycopg.connect(witness.url()) as conn:
        for i in range(2, 50):
            conn.execute("insert into ledger values (%s, %s)", (i, f"n{i}"), prepare=i % 2 == 0)
        conn.execute("select count(*) from ledger where note like %s", ("n%",), binary=True)
        try:
            conn.execute("select * from ledger where id = 'x'")
        except psycopg.errors.InvalidTextRepresentation:
            conn.rollback()
    bench = _pgbench(pg, witness.port, "-c", "4", "-t", "50", "-M", "extended")
    assert bench.returncode == 0, bench.stderr
    bench = _pgbench(pg, witness.port, "-c", "2", "-t", "50", "-S")
    assert bench.returncode == 0, bench.stderr

    time.sleep(0.5)
    logged = list(pglog.statements(pg.log_path, offset))
    assert len(logged) > 600
    witness.stop()
    by_pid = {
        entry["end"]["backend_pid"]: entry
        for entry in sessions(witness.trail).values()
        if entry["end"] is not None
    }
    # Each logged statement is matched to a command of its session, in order: its text, or,
    # for a prepared statement the wire cannot vouch for, the text it was last defined with.
    missing = []
    for pid, text in logged:
        entry = by_pid.get(pid)
        if entry is None or not entry.setdefault("left", [*entry["commands"]]):
            missing.append((pid, text))
            continue
        left = entry["left"]
        found = next((c for c in left if text in _texts(c)), None)
        if found is None:
            missing.append((pid, text))
        else:
            del left[: left.index(found) + 1]
    assert not missing, missing[:5]


def _texts(command: dict) -> list[str]:
    return [command["text"], *(p["text"] for p in command.get("prepared", ()) if p["text"])]


def test_kill_9_during_pgbench_loses_no_executed_statement(
    pg: PostgresServer, witness: Witness, tmp_path: Path
) -> None:
    init = _pgbench(pg, pg.port, "-i", "-q", "-s", "1")
    assert init.returncode == 0, init.stderr
    offset = pglog.size(pg.log_path)
    bench = subprocess.Popen(
        [
            "pgbench",
            "-h",
            "127.0.0.1",
            "-p",
            str(witness.port),
            "-U",
            "postgres",
            "-c",
            "4",
            "-j",
            "2",
            "-T",
            "60",
            "postgres",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(3)
    witness.kill()
    bench.wait(timeout=60)
    assert bench.returncode != 0  # its connections were cut
    time.sleep(1)
    logged = Counter(text for _, text in pglog.statements(pg.log_path, offset))
    assert sum(logged.values()) > 500
    recorded = Counter(
        c["text"] for entry in sessions(witness.trail).values() for c in entry["commands"]
    )
    assert not logged - recorded
    verify = run(str(Path(witness_bin())), "verify", "--trail", str(witness.trail))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def witness_bin() -> str:
    from witnessproc import WITNESS

    return WITNESS
