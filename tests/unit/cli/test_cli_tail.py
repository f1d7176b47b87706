"""witness tail, against real trails: the last commands, filters, JSON lines, and -f following
a trail that the store writes meanwhile, in another process's view."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from witnesscli import WITNESS, Follower, witness_env

from appliance.config import TrailSettings
from appliance.trail import db
from appliance.trail.store import Trail


def tail(cli: click.Group, path: Path, *args: str) -> list[str]:
    result = CliRunner().invoke(cli, ["tail", "--trail", str(path), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()


def tail_json(cli: click.Group, path: Path, *args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in tail(cli, path, "--json", *args)]


# --- the last commands -------------------------------------------------------------------


def test_the_last_commands_with_their_results(cli: click.Group, path: Path) -> None:
    assert tail(cli, path, "-n", "2") == [
        "2023-11-14 22:14:21  a1ffee-bob  -  other  -> #1 recorded: select now() -- \\x1b[2J",
        "2023-11-14 22:14:21  a1ffee-bob  -  other  <- #1 ok rows=1 bytes=30 0.2ms",
        "2023-11-14 22:15:21  b7-open  -  main  -> #1 recorded: UPDATE Accounts SET x = 1",
    ]


def test_by_default_the_last_ten(cli: click.Group, path: Path) -> None:
    found = tail_json(cli, path)
    commands = [(e["session"], e["n"]) for e in found if e["event"] == "command"]
    assert commands == [
        ("a1b2c3d4-alice", 1),
        ("a1b2c3d4-alice", 2),
        ("a1b2c3d4-alice", 3),
        ("a1b2c3d4-alice", 4),
        ("a1ffee-bob", 1),
        ("b7-open", 1),
    ]
    results = [(e["session"], e["n"], e["status"]) for e in found if e["event"] == "result"]
    assert results == [
        ("a1b2c3d4-alice", 1, "ok"),
        ("a1b2c3d4-alice", 2, "ok"),
        ("a1b2c3d4-alice", 3, "error"),
        ("a1ffee-bob", 1, "ok"),
    ]
    assert [e["seq"] for e in found] == sorted(e["seq"] for e in found)
    assert tail(cli, path, "-n", "0") == []


def test_decisions_and_results_for_people(cli: click.Group, decided_path: Path) -> None:
    lines = tail(cli, decided_path)
    carol, dave = "c2-carol  Carol@Example.com  main", "d2-dave  sub-dave  other"
    assert [line[21:] for line in lines] == [
        f"{carol}  -> #1 allow: SELECT * FROM orders",
        f"{dave}  -> #1 allow: SELECT pg_sleep(60)",
        f"{carol}  <- #1 ok rows=2 bytes=80 1.5ms",
        f"{carol}  -> #2 block (no-wipe): DELETE FROM orders",
        f"{carol}  <- #2 error rows=0 bytes=90 0ms 42501 blocked by rule 'no-wipe'",
        f"{dave}  -> #0 recorded: cancel request",
        f"{dave}  <- #1 error rows=0 bytes=70 2500ms 57014 canceling statement",
        f"{carol}  -> #3 hold (ask-first): UPDATE accounts SET x = 1",  # on one line
        f"{carol}  <- #3 ok rows=1 bytes=20 2000ms",
    ]


def test_json_lines(cli: click.Group, decided_path: Path) -> None:
    found = tail_json(cli, decided_path, "-n", "1")
    held, result = found
    assert held["event"] == "command"
    assert held["time"] == "2023-11-14T22:13:26.000000+00:00"
    assert (held["session"], held["backend"], held["n"]) == ("c2-carol", "main", 3)
    assert held["text"] == "UPDATE accounts\n   SET x = 1"
    assert held["decision"] == {
        "action": "hold",
        "rule": "ask-first",
        "reason": "changes to accounts",
        "approval": "h-1",
    }
    assert held["identity"]["subject"] == "sub-carol"  # the session's: it has none of its own
    assert result["event"] == "result"
    assert (result["n"], result["status"], result["rows"]) == (3, "ok", 1)
    assert result["identity"] == held["identity"]
    assert result["seq"] > held["seq"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--identity", "carol@EXAMPLE.com"], [("c2-carol", 1), ("c2-carol", 2), ("c2-carol", 3)]),
        (["--identity", "sub-carol"], [("c2-carol", 1), ("c2-carol", 2), ("c2-carol", 3)]),
        (["--identity", "SUB-CAROL"], []),  # a subject is matched exactly
        (["--identity", "sub-dave"], [("d2-dave", 1), ("d2-dave", 0)]),
        (["--backend", "other"], [("d2-dave", 1), ("d2-dave", 0)]),
        (["--backend", "main", "--identity", "sub-dave"], []),
        (["--backend", "main", "-n", "1"], [("c2-carol", 3)]),
        (["--identity", "sub-carol", "-n", "2"], [("c2-carol", 2), ("c2-carol", 3)]),
    ],
)
def test_filters(
    cli: click.Group, decided_path: Path, options: list[str], expected: list[tuple[str, int]]
) -> None:
    found = tail_json(cli, decided_path, *options)
    assert [(e["session"], e["n"]) for e in found if e["event"] == "command"] == expected
    shown = {(e["session"], e["n"]) for e in found if e["event"] == "command"}
    assert all((e["session"], e["n"]) in shown for e in found if e["event"] == "result")


def test_a_command_under_another_identity_than_its_session(
    cli: click.Group, identity_path: Path
) -> None:
    # Dave's second command was recorded after his binding expired: it ran under none.
    found = tail_json(cli, identity_path, "--identity", "sub-dave")
    assert [(e["session"], e["n"], e["text"]) for e in found] == [("d1-dave", 1, "SELECT 3")]


# --- following -----------------------------------------------------------------------------


@pytest.fixture
def follower() -> Iterator[list[Follower]]:
    started: list[Follower] = []
    yield started
    for one in started:
        if one.proc.poll() is None:
            one.proc.kill()
            one.proc.wait()


def query(n: int, text: str) -> dict[str, object]:
    return {"n": n, "kind": "query", "text": text}


def done(n: int, rows: int) -> dict[str, object]:
    return {"n": n, "status": "ok", "rows": rows, "bytes": 10, "duration_ms": 0.1}


START = {"backend": {"name": "main", "address": "127.0.0.1", "port": 5432}, "identity": None}


def test_follow_prints_commits_as_they_come_and_ctrl_c_ends_it(
    tmp_path: Path, follower: list[Follower]
) -> None:
    trail = Trail.open(TrailSettings.beside(tmp_path / "trail.db"))
    try:
        trail.append("session_start", "s1", START)
        trail.append("command", "s1", query(1, "select 1"))
        trail.append("result", "s1", done(1, 1))
        trail.commit()
        follower.append(Follower(trail_path := tmp_path / "trail.db"))
        watch = follower[0]
        first = watch.take(2)
        assert [(e["event"], e["n"]) for e in first] == [("command", 1), ("result", 1)]
        trail.append("command", "s1", query(2, "select 2"))
        trail.commit()
        (second,) = watch.take(1)
        assert (second["event"], second["text"]) == ("command", "select 2")
        trail.append("result", "s1", done(2, 7))
        trail.commit()
        (answer,) = watch.take(1)
        assert (answer["event"], answer["n"], answer["rows"]) == ("result", 2, 7)
        assert watch.quiet()
    finally:
        trail.close()
    status, err = watch.interrupt()
    assert (status, err) == (0, "")
    assert trail_path.exists()


def test_follow_a_trail_whose_recorder_starts_later(
    tmp_path: Path, follower: list[Follower]
) -> None:
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings)
    trail.append("session_start", "s0", START)
    trail.append("command", "s0", query(1, "select 'before the stop'"))
    trail.close()  # a trail no recorder holds: no WAL, so it is read immutable
    assert not settings.path.with_name("trail.db-wal").exists()
    follower.append(Follower(settings.path))
    watch = follower[0]
    (before,) = watch.take(1)  # it has the trail open
    assert before["text"] == "select 'before the stop'"
    trail = Trail.open(settings)  # the recorder starts
    try:
        trail.append("session_start", "s1", START)
        trail.append("command", "s1", query(1, "select 'after the start'"))
        trail.commit()
        (seen,) = watch.take(1)
        assert seen["text"] == "select 'after the start'"
    finally:
        trail.close()
    assert watch.interrupt() == (0, "")


def test_follow_keeps_up_with_a_busy_writer(tmp_path: Path, follower: list[Follower]) -> None:
    """Commits in another thread, many small ones, with the WAL copied into the database and
    restarted under the reader all along: every command comes once, in order."""
    settings = TrailSettings.beside(
        tmp_path / "trail.db", checkpoint_events=50, checkpoint_seconds=0.05, examine_commits=5
    )
    trail = Trail.open(settings)
    trail.append("session_start", "s", START)
    trail.append("command", "s", query(1, "select 'before'"))
    trail.commit()
    follower.append(Follower(settings.path, "-n", "1"))
    watch = follower[0]
    (before,) = watch.take(1)  # it is following now
    sessions, commands = 40, 25

    def write() -> None:
        for s in range(sessions):
            sid = f"s{s:03d}"
            trail.append("session_start", sid, START)
            for n in range(1, commands + 1):
                trail.append("command", sid, query(n, f"select {s}, {n}"))
                trail.commit()
                trail.append("result", sid, done(n, n))
                trail.commit()
            trail.append("session_end", sid, {"reason": "client closed"})
            trail.commit()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        found = watch.take(2 * sessions * commands, timeout=120)
    finally:
        writer.join()
        trail.close()
    assert watch.quiet(0.5)
    assert watch.interrupt() == (0, "")
    with db.reading(settings.path) as conn:
        expected = [
            seq
            for (seq,) in conn.execute(
                "SELECT seq FROM events WHERE type IN ('command', 'result') AND seq > ?",
                (before["seq"],),
            )
        ]
    assert [e["seq"] for e in found] == expected
    assert [e["text"] for e in found if e["event"] == "command"][-1] == "select 39, 25"


def test_output_to_a_reader_that_goes_away(tmp_path: Path) -> None:
    """``witness tail -n 5000 | head -1``: no traceback, status 0."""
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings)
    trail.append("session_start", "s1", START)
    for n in range(1, 5001):
        trail.append("command", "s1", query(n, f"select {n}, '{'x' * 60}'"))
    trail.close()
    proc = subprocess.Popen(
        [*WITNESS, "tail", "-n", "5000", "--trail", str(settings.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=witness_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert b"#1 recorded: select 1," in proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 0
    assert proc.stderr.read() == b""


def test_follow_stops_when_the_trail_is_replaced(tmp_path: Path, follower: list[Follower]) -> None:
    settings = TrailSettings.beside(tmp_path / "trail.db")
    trail = Trail.open(settings)
    trail.append("session_start", "s1", START)
    trail.append("command", "s1", query(1, "select 1"))
    trail.commit()
    follower.append(Follower(settings.path))
    watch = follower[0]
    watch.take(1)
    trail.close()
    aside = tmp_path / "old"
    aside.mkdir()
    for name in ("trail.db", "trail.db.key.checkpoint"):
        (tmp_path / name).rename(aside / name)
    Trail.open(settings).close()  # a new trail, with the same key, where the old one was
    assert watch.proc.wait(timeout=20) == 1
    assert watch.proc.stderr is not None
    err = watch.proc.stderr.read()
    assert err.startswith(f"witness: {settings.path} is now another trail (")
    assert "run witness tail again" in err and "Traceback" not in err
