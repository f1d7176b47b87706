"""witness sessions list|show|replay and witness search, against a real trail."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from appliance.cli import sessions


def run(cli: click.Group, *args: str) -> Result:
    # Wide enough that rich does not fold the ids the assertions look for.
    return CliRunner(env={"COLUMNS": "300"}).invoke(cli, list(args))


def run_json(cli: click.Group, *args: str) -> Any:
    result = run(cli, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- sessions list -----------------------------------------------------------------------


def test_list_json(cli: click.Group, path: Path) -> None:
    found = run_json(cli, "sessions", "list", "--trail", str(path))
    assert [s["id"] for s in found] == ["a1b2c3d4-alice", "a1ffee-bob", "b7-open"]
    alice = found[0]
    assert alice["start"] == "2023-11-14T22:13:20.000000+00:00"
    assert alice["end"] == "2023-11-14T22:13:30.000000+00:00"
    assert alice["duration_s"] == 10.0
    assert alice["client"] == "10.0.0.7:41000"
    assert alice["owner"]["uid"] == 1000
    assert alice["owner"]["exe"] == "/usr/bin/psql"
    assert (alice["db_user"], alice["database"], alice["application_name"]) == (
        "alice",
        "shop",
        "psql",
    )
    assert alice["backend"]["name"] == "main"
    assert (alice["commands"], alice["bytes_in"], alice["bytes_out"]) == (4, 500, 900)
    assert alice["end_reason"] == "client closed"
    still = found[2]
    assert (still["end"], still["duration_s"], still["end_reason"], still["commands"]) == (
        None,
        None,
        None,
        1,
    )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--user", "alice"], ["a1b2c3d4-alice", "b7-open"]),
        (["--user", "1001"], ["a1ffee-bob"]),
        (["--user", "carol"], []),
        (["--backend", "other"], ["a1ffee-bob"]),
        (["--since", "2023-11-14T22:14:50"], ["b7-open"]),  # naive means UTC
        (["--since", "2023-11-14T23:14:10+01:00"], ["a1ffee-bob", "b7-open"]),
        (["--until", "2023-11-14T22:13:30Z"], ["a1b2c3d4-alice"]),
        (["--since", "1d"], ["b7-open"]),  # only the open session reaches into the last day
        (["--since", "2h", "--user", "bob"], []),
    ],
)
def test_list_filters(
    cli: click.Group, path: Path, options: list[str], expected: list[str]
) -> None:
    found = run_json(cli, "sessions", "list", "--trail", str(path), *options)
    assert [s["id"] for s in found] == expected


def test_list_for_people(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "list", "--trail", str(path))
    assert result.exit_code == 0
    for text in ("a1b2c3d4-alice", "a1ffee-bob", "uid 1000 pid 5000 /usr/bin/psql", "500/900"):
        assert text in result.stdout
    assert "client closed" in result.stdout
    assert "open" in result.stdout


def test_list_rejects_a_bad_time(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "list", "--trail", str(path), "--since", "yesterday")
    assert result.exit_code == 2
    assert "neither ISO 8601 nor an age" in result.stderr


# --- sessions show -----------------------------------------------------------------------


def test_show_json(cli: click.Group, path: Path) -> None:
    shown = run_json(cli, "sessions", "show", "a1b", "--trail", str(path))
    assert shown["session"]["id"] == "a1b2c3d4-alice"
    commands = shown["commands"]
    assert [c["n"] for c in commands] == [1, 2, 3, 4]
    assert commands[0]["text"] == "SELECT * FROM orders"
    assert commands[0]["result"]["rows"] == 3
    assert commands[1]["params"] == ["7", None]
    assert commands[2]["result"]["error"]["code"] == "42P01"
    assert commands[3]["refused"] == "trail write failed: disk full"
    assert commands[3]["result"] is None
    assert shown["errors"] == []


def test_show_for_people(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "show", "a1b2c3d4-alice", "--trail", str(path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (
        "a1b2c3d4-alice",
        "2023-11-14 22:13:20 UTC",
        "client closed",
        "SELECT * FROM orders",
        'params: ["7", null]',
        '42P01 relation "nope" does not exist',
        "refused: trail write failed: disk full",
        "uid 1000 pid 5000 /usr/bin/psql, comm psql",
    ):
        assert text in out, text


def test_show_escapes_terminal_controls(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "show", "a1f", "--trail", str(path))
    assert result.exit_code == 0
    assert "\x1b" not in result.stdout
    assert "\\x1b[2J" in result.stdout


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("zz", "no session matches 'zz'"),
        ("a1", "'a1' matches several sessions (a1b2c3d4-alice, a1ffee-bob)"),
    ],
)
def test_show_unknown_or_ambiguous_id(
    cli: click.Group, path: Path, given: str, message: str
) -> None:
    result = run(cli, "sessions", "show", given, "--trail", str(path))
    assert result.exit_code == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- sessions replay ---------------------------------------------------------------------


def test_replay_prints_events_in_order_with_their_times(
    cli: click.Group, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(sessions.time, "sleep", slept.append)
    result = run(cli, "sessions", "replay", "a1b2", "--speed", "2", "--trail", str(path))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("+")]
    assert lines[0].startswith("+    0.000s  session start: 10.0.0.7:41000 as alice")
    assert lines[1] == "+    1.000s  -> #1 query: SELECT * FROM orders"
    assert lines[2] == "+    1.500s  <- #1 ok rows=3 bytes=120 0.5ms"
    assert "42P01" in lines[6]
    assert lines[-1].startswith("+   10.000s  session end: client closed")
    assert "refused: trail write failed" in result.stdout
    assert sum(slept) == pytest.approx(10 / 2)


@pytest.mark.parametrize("speed", ["0", "max"])
def test_replay_without_pauses(
    cli: click.Group, path: Path, monkeypatch: pytest.MonkeyPatch, speed: str
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(sessions.time, "sleep", slept.append)
    result = run(cli, "sessions", "replay", "a1f", "--speed", speed, "--trail", str(path))
    assert result.exit_code == 0
    assert slept == []
    assert "\x1b" not in result.stdout


def test_replay_rejects_a_bad_speed(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "replay", "a1f", "--speed", "-1", "--trail", str(path))
    assert result.exit_code == 2


# --- search ------------------------------------------------------------------------------


def test_search_ignores_case(cli: click.Group, path: Path) -> None:
    found = run_json(cli, "search", "SELECT", "--trail", str(path))
    assert [(m["session"], m["n"], m["status"]) for m in found] == [
        ("a1b2c3d4-alice", 1, "ok"),
        ("a1b2c3d4-alice", 3, "error"),
        ("a1ffee-bob", 1, "ok"),
    ]
    assert found[0]["time"] == "2023-11-14T22:13:21.000000+00:00"
    found = run_json(cli, "search", "accounts", "--trail", str(path))
    assert [(m["session"], m["text"], m["status"]) for m in found] == [
        ("b7-open", "UPDATE Accounts SET x = 1", None)
    ]


def test_search_for_people(cli: click.Group, path: Path) -> None:
    result = run(cli, "search", "orders", "--trail", str(path))
    assert result.exit_code == 0
    assert "INSERT INTO orders" in result.stdout
    assert "refused" in result.stdout  # the DELETE never ran
    result = run(cli, "search", "no such text", "--trail", str(path))
    assert (result.exit_code, result.stdout.strip()) == (0, "no commands match")


def test_search_text_is_not_a_pattern(cli: click.Group, path: Path) -> None:
    assert run_json(cli, "search", "%", "--trail", str(path)) == []
    assert len(run_json(cli, "search", "*", "--trail", str(path))) == 2


# --- errors ------------------------------------------------------------------------------

COMMANDS = [
    ["sessions", "list"],
    ["sessions", "show", "a1b"],
    ["sessions", "replay", "a1b"],
    ["search", "x"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_trail(cli: click.Group, tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "missing.db"
    result = run(cli, *command, "--trail", str(missing))
    assert result.exit_code == 1
    assert result.stderr == f"witness: {missing}: no such trail file\n"
    assert not missing.exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_not_a_trail(cli: click.Group, tmp_path: Path, command: list[str]) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"hello, not a database" * 50)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    for path in (junk, other):
        result = run(cli, *command, "--trail", str(path))
        assert result.exit_code == 1
        assert result.stderr.startswith(f"witness: {path}: not a Witness trail")
        assert "Traceback" not in result.output
        assert not Path(str(path) + "-wal").exists()


def test_a_corrupt_payload_is_an_error_not_a_traceback(cli: click.Group, path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = '{oops' WHERE seq IN (1, 2)")
    conn.close()
    for command in COMMANDS:
        result = run(cli, *command, "--trail", str(path))
        assert result.exit_code == 1, command
        assert result.stderr.startswith("witness: "), command
        assert "Traceback" not in result.output
