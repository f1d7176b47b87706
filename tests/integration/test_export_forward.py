"""[[export]] with a real recorder, psql and PostgreSQL: commands arrive in the export files
as they are committed, and across a restart, and a kill -9, of the recorder nothing is
exported twice or lost; the JSONL forwarded verifies as the whole chain."""

from __future__ import annotations

import json
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
