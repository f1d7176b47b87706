"""[[export]] with a real recorder, psql and PostgreSQL: commands arrive in the export files
as they are committed, and across a restart, and a kill -9, of the recorder nothing is
exported twice or lost; the JSONL forwarded verifies as the whole chain."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from witnesscli import WITNESS as CLI
from witnesscli import witness_env
from witnessproc import Witness, events, run

from appliance.config import load
from appliance.export import forward
from appliance.lab.postgres import PostgresServer
from appliance.trail import db, segments


def exports(tmp_path: Path) -> str:
    return f"""
[[export]]
name = "chain"
format = "jsonl"
file = "{tmp_path / "out" / "trail.jsonl"}"

[[export]]
name = "siem"
format = "cef"
file = "{tmp_path / "out" / "trail.cef"}"
"""


def psql(port: int, *commands: str) -> None:
    argv = ["psql", "-X", "-At", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
    done = run(*argv, "-d", "postgres", *(a for c in commands for a in ("-c", c)))
    assert done.returncode == 0, done.stderr


def lines_with(path: Path, text: str, count: int, timeout: float = 20.0) -> list[str]:
    """The file's lines once ``count`` of them hold ``text``."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while time.monotonic() < deadline:
        found = path.read_text().splitlines() if path.exists() else []
        if sum(text in line for line in found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{path}: {sum(text in line for line in found)} of {count} lines")


def test_forwarded_as_committed_and_never_twice(pg: PostgresServer, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    trail = tmp_path / "trail.db"
    jsonl, cef = tmp_path / "out" / "trail.jsonl", tmp_path / "out" / "trail.cef"
    recorder = Witness(pg.port, trail, tables=exports(tmp_path))
    try:
        psql(recorder.port, "select 'first-1'", "select 'first-2'")
        # While the recorder runs, as it commits: within a checkpoint's second or so.
        lines_with(cef, "cs1=select 'first-", 2)
    finally:
        assert recorder.stop() == 0
    recorder = Witness(pg.port, trail, tables=exports(tmp_path))
    try:
        psql(recorder.port, "select 'second-1'")
        lines_with(cef, "cs1=select 'second-1'", 1)
    finally:
        recorder.kill()  # no last round: the next start resumes from the state files
    recorder = Witness(pg.port, trail, tables=exports(tmp_path))
    try:
        psql(recorder.port, "select 'third-1'")
    finally:
        assert recorder.stop() == 0

    recorded = events(trail)
    db = sqlite3.connect(f"file:{trail}?mode=ro", uri=True)
    stored = [seq for (seq,) in db.execute("SELECT seq FROM events ORDER BY seq")]
    db.close()
    seqs = [json.loads(line)["seq"] for line in jsonl.read_text().splitlines()]
    assert seqs == stored  # every event, once, in order
    commands = [e["text"] for e in recorded if e["type"] == "command"]
    cef_lines = cef.read_text().splitlines()
    queries = [line.split("cs1=", 1)[1] for line in cef_lines if "|command|" in line]
    assert queries == commands
    assert [q for q in queries if "-1'" in q or "-2'" in q] == [
        "select 'first-1'",
        "select 'first-2'",
        "select 'second-1'",
        "select 'third-1'",
    ]
    state = json.loads((tmp_path / "trail.db.export-siem").read_text())
    assert state["seq"] == stored[-1]
    # What witness status shows of it: nothing waits.
    settings = load(trail.with_suffix(".toml"))
    lags = {e.name: forward.lag(settings.trail, e) for e in settings.exports}
    assert lags["siem"]["exported"] == stored[-1] and lags["siem"]["waiting"] == 0
    assert lags["chain"]["error"] is None
    assert state["size"] == cef.stat().st_size
    checked = subprocess.run(
        [*CLI, "verify", "--jsonl", str(jsonl), "--trail", str(trail)],
        capture_output=True,
        text=True,
        env=witness_env(),
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "the whole chain from its genesis; all vouched for" in checked.stdout


def test_an_unreachable_syslog_does_not_hold_the_recorder_back(
    pg: PostgresServer, tmp_path: Path
) -> None:
    tables = """
[[export]]
name = "siem"
format = "cef"
syslog = "127.0.0.1:9"
transport = "tcp"
"""
    recorder = Witness(pg.port, tmp_path / "trail.db", tables=tables)
    try:
        psql(recorder.port, "select 1", "select 2")
        deadline = time.monotonic() + 20
        state: dict[str, object] = {}
        while time.monotonic() < deadline and not state.get("error"):
            path = tmp_path / "trail.db.export-siem"
            state = json.loads(path.read_text()) if path.exists() else {}
            time.sleep(0.1)
        assert state["error"] == "syslog 127.0.0.1:9 (tcp): cannot connect: Connection refused"
    finally:
        assert recorder.stop() == 0
    recorded = events(tmp_path / "trail.db")
    texts = [e["text"] for e in recorded if e["type"] == "command"]
    assert texts == ["select 1", "select 2"]
    # Only what has no CEF line (the genesis and its checkpoint) counts as done.
    start = next(e for e in recorded if e["type"] == "session_start")
    assert isinstance(state["seq"], int) and state["seq"] < start["seq"]
    log = (tmp_path / "trail.log").read_text()
    assert "export siem: syslog 127.0.0.1:9 (tcp): cannot connect: Connection refused" in log


def retire_config(tmp_path: Path) -> str:
    return f"""
[[export]]
name = "chain"
format = "jsonl"
file = "{tmp_path / "out" / "trail.jsonl"}"
"""


def drive(witness: Witness, seconds: int) -> None:
    done = subprocess.run(
        ["pgbench", "-n", "-S", "-c", "2", "-T", str(seconds), witness.url()],
        capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def rewrite(path: Path, offset: int, data: bytes) -> None:
    """Write over part of a file that the recorder may be appending to."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, offset) == len(data)
    finally:
        os.close(fd)


def first_event(trail: Path) -> int:
    with db.reading(trail) as conn:
        return int(conn.execute("SELECT min(seq) FROM events").fetchone()[0])


def test_a_jsonl_export_read_back_whole_retires_sealed_segments(
    pg: PostgresServer, bench: None, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    trail = tmp_path / "trail.db"
    jsonl = tmp_path / "out" / "trail.jsonl"
    kept = 'segment_mb = 1\nretire = "never"'
    recorder = Witness(pg.port, trail, tables=retire_config(tmp_path), trail_options=kept)
    try:
        drive(recorder, 6)
    finally:
        assert recorder.stop() == 0
    sealed = segments.sealed(trail)
    assert len(sealed) >= 2 and first_event(trail) == 1
    # Someone rewrites an event of the first segment in the export file, in place.
    lines = jsonl.read_bytes().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if json.loads(line)["seq"] == 7)
    offset = sum(len(line) for line in lines[:target])
    original = lines[target]
    rewrite(jsonl, offset, original.replace(b'"ts":1', b'"ts":2', 1))
    retiring = 'segment_mb = 1\nretire = "export:chain"'
    recorder = Witness(pg.port, trail, tables=retire_config(tmp_path), trail_options=retiring)
    try:
        settings = load(trail.with_suffix(".toml"))
        deadline = time.monotonic() + 20
        while not (error := forward.lag(settings.trail, settings.exports[0])["error"]):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "cannot be read back whole" in str(error) and "event 7" in str(error)
        time.sleep(1.5)
        assert sealed[0].path.exists() and first_event(trail) == 1
        # Put right, the file is read back whole, and the segments it holds are retired.
        rewrite(jsonl, offset, original)
        deadline = time.monotonic() + 20
        while first_event(trail) <= sealed[-1].last:
            assert time.monotonic() < deadline, segments.sealed(trail)
            time.sleep(0.2)
    finally:
        assert recorder.stop() == 0
    assert not any(s.path.exists() for s in sealed)
    # The refusal is in the trail (in the export, which holds what was retired), once.
    exported_events = [json.loads(line) for line in jsonl.read_bytes().splitlines()]
    reasons = [
        json.loads(e["payload"])["message"]
        for e in exported_events
        if e["type"] == "error" and json.loads(e["payload"]).get("where") == "retire"
    ]
    assert len(reasons) == 1 and "export chain" in reasons[0] and "event 7" in reasons[0]
    local = run(*CLI, "verify", "--trail", str(trail), "--json", env=witness_env())
    assert local.returncode == 0, local.stdout + local.stderr
    assert json.loads(local.stdout)["retired"] >= sealed[-1].last
    exported = run(
        *CLI, "verify", "--jsonl", str(jsonl), "--public-key", f"{trail}.key.pub", "--json",
        env=witness_env(),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stdout + exported.stderr
