"""[capture] wire with psql and psycopg through a real recorder and PostgreSQL: the raw
messages in the trail, exported as pcap and decoded by tshark; what is never recorded (a
secret, a masked session's values); and nothing at all by default."""

from __future__ import annotations

import base64
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tshark import tshark
from witnesscli import WITNESS as CLI
from witnesscli import witness_env
from witnessproc import Witness, events, run

from appliance.lab.postgres import PostgresServer

WIRE = "[capture]\nwire = true\n"


def psql(port: int, *commands: str) -> subprocess.CompletedProcess[str]:
    argv = ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    return run(*argv, "-d", "postgres", *(a for c in commands for a in ("-c", c)))


def export_pcap(trail: Path, out: Path, *args: str) -> None:
    argv = [*CLI, "export", "--format", "pcap", "--trail", str(trail), "--out", str(out), *args]
    done = subprocess.run(argv, capture_output=True, text=True, env=witness_env(), check=False)
    assert done.returncode == 0, done.stderr


def wire_of(trail: Path, session: str) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """The session's wire events, and each way's recorded bytes."""
    found = [e for e in events(trail) if e["type"] == "wire" and e["session"] == session]
    streams = {"client": b"", "server": b""}
    for event in found:
        if "data" in event:
            assert event["offset"] == len(streams[event["from"]])
            streams[event["from"]] += base64.b64decode(event["data"])
    return found, streams


def ended(trail: Path) -> dict[str, Any]:
    return next(e for e in events(trail) if e["type"] == "session_end")


@pytest.fixture
def recorder(pg: PostgresServer, tmp_path: Path) -> Iterator[Witness]:
    witness = Witness(pg.port, tmp_path / "trail.db", tables=WIRE)
    yield witness
    witness.stop()


def test_tshark_decodes_a_recorded_session(
    pg: PostgresServer, recorder: Witness, tmp_path: Path
) -> None:
    done = psql(
        recorder.port,
        "select 41 + 1 as answer",
        "select x from nowhere",
        "select repeat('y', 5000) as long",
    )
    assert done.stdout.startswith("42\n")
    with psycopg.connect(recorder.url(), autocommit=True) as conn:
        assert conn.execute("select %s::int * 2 as twice", [21]).fetchone() == (42,)
    recorder.stop()
    first = next(e for e in events(recorder.trail) if e["type"] == "session_start")["session"]
    found, streams = wire_of(recorder.trail, first)
    assert all("withheld" not in e for e in found)
    assert b"Qselect 41 + 1 as answer" not in streams["client"]  # a length sits between
    assert b"select 41 + 1 as answer\0" in streams["client"]
    assert b"\x00\x00\x00\x0242" in streams["server"]  # the DataRow's value
    assert ended(recorder.trail)["wire"] == {k: len(v) for k, v in streams.items()}

    pcap = tmp_path / "session.pcap"
    export_pcap(recorder.trail, pcap, "--session", first)
    decoded = tshark(pcap, pg.port, "-V")
    assert "Query: select 41 + 1 as answer" in decoded
    assert "Query: select x from nowhere" in decoded
    assert "Query: select repeat('y', 5000) as long" in decoded
    assert "Type: Data row" in decoded and "Data: 3432" in decoded  # "42"
    assert 'Message: relation "nowhere" does not exist' in decoded
    problems = tshark(pcap, pg.port, "-Y", "tcp.analysis.flags && !tcp.analysis.window_update")
    assert problems == ""
    summary = tshark(pcap, pg.port)
    assert "[SYN]" in summary and "[FIN, ACK]" in summary
    assert f"→ {pg.port}" in summary or f"-> {pg.port}" in summary

    everything = tmp_path / "all.pcap"
    export_pcap(recorder.trail, everything)
    both = tshark(everything, pg.port, "-T", "fields", "-e", "pgsql.query")
    assert "select $1::int * 2 as twice" in both  # psycopg's Parse, in the second stream
    streams_seen = tshark(everything, pg.port, "-T", "fields", "-e", "tcp.stream")
    assert set(streams_seen.split()) == {"0", "1"}


def test_a_secret_ends_the_recording_and_is_nowhere(recorder: Witness, tmp_path: Path) -> None:
    secret = f"hunter2-{uuid.uuid4().hex[:8]}"
    role = f"wire_{uuid.uuid4().hex[:8]}"
    done = psql(
        recorder.port,
        "select 1",
        f"create role {role} password '{secret}'",
        f"select '{role}'",
    )
    assert done.returncode == 0, done.stderr
    recorder.stop()
    found, streams = wire_of(recorder.trail, ended(recorder.trail)["session"])
    assert b"select 1\0" in streams["client"]
    assert found[-1]["withheld"].startswith("a command held a secret")
    assert f"select '{role}'".encode() not in streams["client"]  # nothing after it
    pcap = tmp_path / "s.pcap"
    export_pcap(recorder.trail, pcap)
    for path in (*recorder.trail.parent.glob("trail.db*"), pcap):
        assert secret.encode() not in path.read_bytes(), path


MASKS = """
[policy]
default = "allow"

[[policy.masks]]
name = "ssn"
tables = ["wm_*"]
columns = ["ssn"]
"""


def test_a_masked_session_records_no_raw_message(pg: PostgresServer, tmp_path: Path) -> None:
    table = f"wm_{uuid.uuid4().hex[:8]}"
    ssn = "123-45-6789"
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int, ssn text)")
        conn.execute(f"insert into {table} values (1, %s)", [ssn])
    recorder = Witness(
        pg.port,
        tmp_path / "trail.db",
        backend_options='catalog_user = "postgres"',
        tables=WIRE + MASKS,
    )
    try:
        done = psql(recorder.port, f"select id, ssn from {table}")
        assert done.stdout == "1|[masked:ssn]\n", done.stderr
    finally:
        recorder.stop()
    session = ended(recorder.trail)["session"]
    found, streams = wire_of(recorder.trail, session)
    assert found == [
        {
            **found[0],
            "withheld": "masks apply to this session: its raw messages are not recorded",
        }
    ]
    assert streams == {"client": b"", "server": b""}
    assert ended(recorder.trail)["wire"] == {"client": 0, "server": 0}
    pcap = tmp_path / "masked.pcap"
    export_pcap(recorder.trail, pcap)
    assert len(pcap.read_bytes()) == 24  # a header, and no packet
    for path in (*recorder.trail.parent.glob("trail.db*"), pcap):
        assert ssn.encode() not in path.read_bytes(), path
    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute(f"drop table {table}")


def test_off_by_default(witness: Witness) -> None:
    assert psql(witness.port, "select 1").returncode == 0
    witness.stop()
    assert [e for e in events(witness.trail) if e["type"] == "wire"] == []
    assert "wire" not in ended(witness.trail)
