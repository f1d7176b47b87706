"""witness sessions list|show|replay and witness search, against a real trail."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from rich.cells import cell_len

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


def header(out: str) -> list[str]:
    """The column names of the table in ``out``."""
    line = next(line for line in out.splitlines() if line.startswith("┃"))
    return [name.strip() for name in line.strip("┃").split("┃")]


def rows(out: str) -> list[list[str]]:
    """The table's body lines in ``out``, cut into cells."""
    lines = [line for line in out.splitlines() if line.startswith("│")]
    return [[c.strip() for c in line.strip("│").split("│")] for line in lines]


def test_list_for_people(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "list", "--trail", str(path))
    assert result.exit_code == 0
    out = result.stdout
    assert header(out) == ["id", "start", "identity", "backend", "commands", "outcome"]
    assert rows(out) == [
        ["a1b2c3d4-alice", "2023-11-14 22:13:20", "-", "main", "4", "client closed"],
        ["a1ffee-bob", "2023-11-14 22:14:20", "-", "other", "1", "server closed"],
        ["b7-open", "2023-11-14 22:15:20", "-", "main", "1", "open"],
    ]


def test_list_wide_for_people(cli: click.Group, path: Path) -> None:
    result = run(cli, "sessions", "list", "--wide", "--trail", str(path))
    assert result.exit_code == 0
    assert header(result.stdout) == [
        *("id", "start", "end", "duration", "client", "identity", "owner", "db user"),
        *("database", "application", "backend", "commands", "bytes in/out", "end reason"),
    ]
    for text in ("a1b2c3d4-alice", "a1ffee-bob", "uid 1000 pid 5000 /usr/bin/psql", "500/900"):
        assert text in result.stdout
    assert "main (127.0.0.1:5432)" in result.stdout
    assert "client closed" in result.stdout
    assert "open" in result.stdout


def test_list_json_is_the_same_with_wide(cli: click.Group, identity_path: Path) -> None:
    listed = run_json(cli, "sessions", "list", "--trail", str(identity_path))
    assert run_json(cli, "sessions", "list", "--wide", "--trail", str(identity_path)) == listed
    assert set(listed[0]) >= {"owner", "client", "db_user", "bytes_in", "end_reason"}


def test_list_fits_a_100_column_terminal(cli: click.Group, crowd_path: Path) -> None:
    narrow = CliRunner(env={"COLUMNS": "100"})
    result = narrow.invoke(cli, ["sessions", "list", "--trail", str(crowd_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines and max(cell_len(line) for line in lines) <= 100
    found = rows(result.stdout)
    # One line per session: nothing wrapped onto a second line.
    assert [r[0] for r in found] == ["0000000000000000", "0000000000000001", "00000000000000ff"]
    assert [r[1] for r in found] == [
        "2023-11-14 22:13:20",
        "2023-11-14 22:13:30",
        "2023-11-14 22:13:50",
    ]
    assert [r[4] for r in found] == ["1", "1", "0"]
    first, second, refused = found
    # Long names are cut, with an ellipsis, never wrapped; the start of each is kept.
    assert first[2].startswith("svc-nightly") and first[2].endswith("…")
    assert second[2].startswith("agent-ci-") and second[2].endswith("…")
    assert all(r[3].startswith("billing-") and r[3].endswith("…") for r in found)
    assert first[5].startswith("client clos")
    assert refused[2] == "-" and refused[5].startswith("refused 28")
    # The same sessions with every column do not fit: this check can see a wrapped row.
    wide = narrow.invoke(cli, ["sessions", "list", "--wide", "--trail", str(crowd_path)])
    assert len(rows(wide.stdout)) > 3


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
    ["tail"],
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
    # Alice's session_start and first command (events 1 and 2 are the trail's genesis).
    conn.execute("UPDATE events SET payload = '{oops' WHERE seq IN (3, 4)")
    conn.close()
    for command in COMMANDS:
        result = run(cli, *command, "--trail", str(path))
        assert result.exit_code == 1, command
        assert result.stderr.startswith("witness: "), command
        assert "Traceback" not in result.output


# --- identities --------------------------------------------------------------------------

IDENTITY_IDS = ["c1-carol", "d1-dave", "e1-refused", "f1-old"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], IDENTITY_IDS),
        (["--identity", "Carol@Example.com"], ["c1-carol"]),
        (["--identity", "CAROL@example.COM"], ["c1-carol"]),  # email: case ignored
        (["--identity", "sub-carol"], ["c1-carol"]),
        (["--identity", "SUB-CAROL"], []),  # subject: exact
        (["--identity", "sub-dave"], ["d1-dave"]),  # no email; the subject still matches
        (["--identity", "nobody@example.com"], []),
        (["--group", "analysts"], ["c1-carol", "d1-dave"]),
        (["--group", "dba"], ["c1-carol"]),
        (["--group", "DBA"], []),
        (["--group", "nobody"], []),
        (["--group", "analysts", "--backend", "other"], ["d1-dave"]),
        (["--group", "analysts", "--user", "1002"], ["c1-carol"]),
        (["--identity", "carol@example.com", "--user", "app"], ["c1-carol"]),
        (["--identity", "carol@example.com", "--user", "1003"], []),
        (["--identity", "sub-dave", "--group", "dba"], []),
        (["--identity", "sub-dave", "--group", "analysts"], ["d1-dave"]),
    ],
)
def test_list_by_identity(
    cli: click.Group, identity_path: Path, options: list[str], expected: list[str]
) -> None:
    found = run_json(cli, "sessions", "list", "--trail", str(identity_path), *options)
    assert [s["id"] for s in found] == expected


def test_list_by_identity_for_people(cli: click.Group, identity_path: Path) -> None:
    result = run(cli, "sessions", "list", "--group", "dba", "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    assert "Carol@Example.com" in result.stdout
    assert "d1-dave" not in result.stdout
    result = run(cli, "sessions", "list", "--identity", "x@y", "--trail", str(identity_path))
    assert (result.exit_code, result.stdout.strip()) == (0, "no sessions")


def test_list_json_carries_identity_and_refusal(cli: click.Group, identity_path: Path) -> None:
    carol, dave, refused, old = run_json(cli, "sessions", "list", "--trail", str(identity_path))
    assert carol["identity"]["email"] == "Carol@Example.com"
    assert carol["identity"]["groups"] == ["dba", "analysts"]
    assert carol["identity"]["binding"] == {
        "kind": "cgroup",
        "target": "/witness-agents/run-1a2b",
        "expires": 1_700_003_600.0,
    }
    assert carol["owner"]["cgroup_id"] == 10002
    assert carol["refused"] is None
    assert (dave["identity"]["subject"], dave["identity"]["email"]) == ("sub-dave", None)
    assert refused["identity"] is None
    assert refused["refused"] == {"code": "28000", "message": "no identity bound to uid 1004"}
    assert refused["owner"]["uid"] == 1004
    assert (old["identity"], old["refused"]) == (None, None)
    assert old["owner"]["uid"] == 1005


def test_list_shows_identities_and_refusals(cli: click.Group, identity_path: Path) -> None:
    result = run(cli, "sessions", "list", "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    brief = {r[0]: r for r in rows(result.stdout)}
    assert brief["c1-carol"][2] == "Carol@Example.com"
    assert brief["d1-dave"][2] == "sub-dave"
    assert brief["e1-refused"][2] == "-"
    assert brief["e1-refused"][5] == "refused 28000: no identity bound to uid 1004"
    assert brief["f1-old"][2] == "-"

    result = run(cli, "sessions", "list", "--wide", "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    wide = {r[0]: r for r in rows(result.stdout)}
    assert wide["c1-carol"][5] == "Carol@Example.com"
    assert wide["c1-carol"][6] == "uid 1002 pid 5002 /usr/bin/psql"  # the owner stays
    assert wide["d1-dave"][5] == "sub-dave"
    assert wide["e1-refused"][13] == "refused 28000: no identity bound to uid 1004"
    assert wide["e1-refused"][6].startswith("uid 1004 pid 5004")
    assert "refused" not in wide["f1-old"][13]
    # The identity column of the refused and the old session holds "-".
    assert wide["e1-refused"][5] == wide["f1-old"][5] == "-"


def test_list_by_identity_reads_no_command(cli: click.Group, identity_path: Path) -> None:
    # A command whose payload cannot be parsed does not trouble a filter on identities,
    # which reads session_start events only.
    conn = sqlite3.connect(identity_path, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET payload = '{oops' WHERE type = 'command'")
    conn.close()
    for options in (["--identity", "sub-dave"], ["--group", "dba"]):
        result = run(cli, "sessions", "list", "--trail", str(identity_path), *options, "--json")
        assert result.exit_code == 0, result.output
        assert len(json.loads(result.stdout)) == 1


def test_show_identity_for_people(cli: click.Group, identity_path: Path) -> None:
    result = run(cli, "sessions", "show", "c1", "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    for line in (
        "owner uid 1002 pid 5002 /usr/bin/psql, comm psql, cgroup /witness-agents/run-1a2b,"
        " source sock_diag, cgroup id 10002",
        "identity Carol@Example.com",
        "issuer https://idp.example.com",
        "subject sub-carol",
        "email Carol@Example.com",
        "name Carol Jones",
        "groups dba, analysts",
        "binding cgroup /witness-agents/run-1a2b, expires 2023-11-14 23:13:20 UTC",
    ):
        assert line in lines, line
    assert not any(line.startswith("refused ") for line in lines)
    result = run(cli, "sessions", "show", "d1", "--trail", str(identity_path))
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "identity sub-dave" in lines
    assert "email -" in lines
    assert "binding uid 1003, no expiry" in lines


@pytest.mark.parametrize("sid", ["e1-refused", "f1-old"])
def test_show_without_identity(cli: click.Group, identity_path: Path, sid: str) -> None:
    result = run(cli, "sessions", "show", sid, "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.stdout.splitlines()]
    assert "identity -" in lines
    assert not any(line.startswith(("issuer", "subject", "binding")) for line in lines)
    refusal = "refused 28000: no identity bound to uid 1004"
    assert (refusal in lines) == (sid == "e1-refused")


def test_show_json_identity(cli: click.Group, identity_path: Path) -> None:
    shown = run_json(cli, "sessions", "show", "c1", "--trail", str(identity_path))
    session = shown["session"]
    assert session["identity"]["subject"] == "sub-carol"
    assert session["identity"]["binding"]["kind"] == "cgroup"
    assert session["owner"]["cgroup_id"] == 10002
    assert session["refused"] is None
    first, second = shown["commands"]
    assert first["identity"]["groups"] == ["dba"]  # its own
    assert second["identity"] == session["identity"]  # none of its own: the session's
    dave = run_json(cli, "sessions", "show", "d1", "--trail", str(identity_path))
    assert dave["commands"][0]["identity"]["subject"] == "sub-dave"
    assert dave["commands"][1]["identity"] is None  # recorded after the binding expired
    assert dave["commands"][1]["refused"] == "identity binding expired"


def test_show_json_without_identity(cli: click.Group, identity_path: Path) -> None:
    refused = run_json(cli, "sessions", "show", "e1", "--trail", str(identity_path))
    assert refused["session"]["identity"] is None
    assert refused["session"]["refused"]["code"] == "28000"
    assert refused["session"]["owner"]["uid"] == 1004
    assert refused["commands"] == []
    old = run_json(cli, "sessions", "show", "f1", "--trail", str(identity_path))
    assert (old["session"]["identity"], old["session"]["refused"]) == (None, None)
    assert [c["identity"] for c in old["commands"]] == [None]


def test_replay_names_the_identity(cli: click.Group, identity_path: Path) -> None:
    result = run(cli, "sessions", "replay", "c1", "--speed", "0", "--trail", str(identity_path))
    assert result.exit_code == 0, result.output
    assert "identity Carol@Example.com" in result.stdout.splitlines()[0]
    result = run(cli, "sessions", "replay", "e1", "--speed", "0", "--trail", str(identity_path))
    assert "refused 28000: no identity bound to uid 1004" in result.stdout
    assert "binding" not in result.stdout  # binding events belong to no session


def test_search_carries_the_identity(cli: click.Group, identity_path: Path) -> None:
    found = run_json(cli, "search", "select", "--trail", str(identity_path))
    assert [(m["session"], m["n"], m["identity"]) for m in found] == [
        ("c1-carol", 1, "Carol@Example.com"),
        ("c1-carol", 2, "Carol@Example.com"),  # from the session
        ("d1-dave", 1, "sub-dave"),
        ("d1-dave", 2, None),  # its own: none
        ("f1-old", 1, None),
    ]
    result = run(cli, "search", "select 3", "--trail", str(identity_path))
    assert "sub-dave" in result.stdout


# --- what the record cannot vouch for ---------------------------------------------------------

SJIS_TEXT = "insert into t values ('ソ')"  # as truth_path's session sent it, in SJIS


def test_show_says_what_is_not_known(cli: click.Group, truth_path: Path) -> None:
    shown = run_json(cli, "sessions", "show", "c0ffee", "--trail", str(truth_path))
    commands = {c["n"]: c for c in shown["commands"]}
    redefined = commands[2]
    assert redefined["text_known"] is False
    assert redefined["prepared"][0]["text"] == "select 1"
    assert redefined["prepared"][0]["changed_by"] == 1
    assert commands[4]["prepared"] == [
        {
            "kind": "statement",
            "name": "wipe",
            "text": "delete from orders",
            "how": "prepared",
            "defined": 3,
        }
    ]
    assert commands[6]["decoding"] == {"encoding": "UTF8", "raw": True, "changed_by": 5}
    assert commands[6]["result"]["reading"] == {"encoding": "SJIS", "text": SJIS_TEXT}

    out = run(cli, "sessions", "show", "c0ffee", "--trail", str(truth_path)).stdout
    for text in (
        "unknown: statement 's1' may have been redefined by command 1; last parsed before any",
        "runs statement 'wipe': delete from orders",
        "(encoding unsure: not valid UTF8, kept as hex, but command 5 may have changed",
        f"read by the backend as SJIS: {SJIS_TEXT}",
    ):
        assert text in out, text


def test_search_finds_prepared_texts_and_readings(cli: click.Group, truth_path: Path) -> None:
    found = run_json(cli, "search", "DELETE FROM ORDERS", "--trail", str(truth_path))
    assert [m["text"] for m in found] == ["prepare wipe as delete from orders", "execute wipe"]
    assert found[1]["text_known"] is True
    (sjis,) = run_json(cli, "search", "ソ", "--trail", str(truth_path))
    assert sjis["text"].startswith("\\x")  # as recorded, before the backend said SJIS
    assert sjis["text_known"] is False
    assert sjis["reading"]["text"] == SJIS_TEXT
    (redefined,) = run_json(cli, "search", "last parsed", "--trail", str(truth_path))
    assert redefined["text_known"] is False
    out = run(cli, "search", "ソ", "--trail", str(truth_path)).stdout
    assert f"read by the backend as SJIS: {SJIS_TEXT}" in out


def test_replay_shows_corrections(
    cli: click.Group, truth_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions.time, "sleep", lambda _: None)
    out = run(cli, "sessions", "replay", "c0ffee", "--trail", str(truth_path)).stdout
    assert "-> #2 execute: unknown: statement 's1' may have been redefined by command 1" in out
    assert "runs statement 'wipe': delete from orders" in out
    assert f"read by the backend as SJIS: {SJIS_TEXT}" in out


def test_a_damaged_prepared_entry_is_shown_not_fatal(cli: click.Group, damaged_path: Path) -> None:
    result = run(cli, "sessions", "show", "d1", "--trail", str(damaged_path))
    assert result.exit_code == 0, result.output
    assert "unknown: statement '7' may have been redefined" in result.stdout
